"""Config -> modules. The only place that reads :class:`vmas.config.Config`; modules take plain keyword arguments."""
from __future__ import annotations

import dataclasses
import typing as tp

from torch import nn

from vmas.config import CodecConfig, Config, EncoderConfig, LMConfig
from vmas.errors import ConfigError


def build_encoder(cfg: EncoderConfig, load_weights: bool = True) -> nn.Module:
    from vmas.models import hiera

    model = hiera.build_from_config(cfg)
    if load_weights and cfg.pretrained:
        hiera.load_hiera_weights(model, cfg.pretrained)
    if cfg.freeze:
        model.requires_grad_(False)
    return model


def build_codec(cfg: CodecConfig, load_weights: bool = True) -> nn.Module:
    """The codec is always frozen: it tokenizes the data and decodes generations, it is never trained here."""
    from vmas.models import codec

    model = codec.build_codec(cfg if load_weights else dataclasses.replace(cfg, pretrained=""))
    model.requires_grad_(False)
    return model.eval()


def lm_kwargs(cfg: LMConfig) -> tp.Dict[str, tp.Any]:
    skip = {"pretrained", "cond_dropout", "tag_dropout", "time_aligned_video", "video_swap_prob", "video_fuse",
            "input_noise", "beat_condition", "beat_dropout", "onset_oracle", "motion_condition"}  # read by VMAS / the fuser
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in skip}


def build_lm(cfg: LMConfig, load_weights: bool = True) -> nn.Module:
    from vmas.models.lm import MusicLM, load_musicgen_lm_weights

    model = MusicLM(**lm_kwargs(cfg))
    if load_weights and cfg.pretrained:
        load_musicgen_lm_weights(model, cfg.pretrained)
    return model


def build_model(cfg: Config, codec: tp.Optional[nn.Module] = None, load_weights: bool = True) -> nn.Module:
    """Assemble :class:`vmas.models.vmas.VMAS`; ``codec`` supplies the codebooks for the contrastive heads."""
    from vmas.models.vmas import VMAS
    from vmas.modules.conditioning import ConditionFuser

    m = cfg.model
    encoder = build_encoder(m.encoder, load_weights)
    lm = build_lm(m.lm, load_weights)
    steps = cfg.data.clip_seconds * cfg.data.frame_rate if m.lm.time_aligned_video else 0.0  # LM steps per window
    if m.lm.video_fuse not in ("cross", "cross+sum", "cross+interp"):
        raise ConfigError(f"model.lm.video_fuse: unknown '{m.lm.video_fuse}' (use cross, cross+sum or cross+interp)")
    if m.lm.video_fuse != "cross" and not steps:
        raise ConfigError(f"model.lm.video_fuse={m.lm.video_fuse} needs model.lm.time_aligned_video=true")
    fuser = ConditionFuser(video_dim=encoder.out_dim, dim=m.lm.dim, tag_dim=m.tags.text_dim if m.tags.enabled else 0,
                           steps_per_clip=steps, step_video=m.lm.video_fuse != "cross",
                           beat_grid=m.lm.beat_condition, step_interp=m.lm.video_fuse == "cross+interp",
                           onset_oracle=m.lm.onset_oracle,
                           motion_fps=cfg.data.fps if m.lm.motion_condition else 0.0,
                           frame_rate=cfg.data.frame_rate)
    contrastive = None
    codebooks = None
    if codec is not None:
        codebooks = codec.codebooks()  # [K, card, D]
        if codebooks.shape[:2] != (m.lm.n_q, m.lm.card):
            raise ConfigError(f"codec has {tuple(codebooks.shape[:2])} (n_q, bins) but model.lm expects "
                              f"({m.lm.n_q}, {m.lm.card}): make model.codec.n_q/bins match model.lm.n_q/card")
    if cfg.loss.contrastive_weight > 0:
        from vmas.losses import ContrastiveLoss

        music_dim = codebooks.shape[-1] if codebooks is not None else m.codec.dimension
        contrastive = ContrastiveLoss(video_dim=encoder.out_dim, music_dim=music_dim, proj_dim=cfg.loss.contrastive_dim,
                                      temperature_init=cfg.loss.contrastive_temperature,
                                      min_temperature=cfg.loss.contrastive_min_temperature)
    return VMAS(encoder, lm, fuser, contrastive=contrastive, cond_dropout=m.lm.cond_dropout,
                tag_dropout=m.lm.tag_dropout, codebooks=codebooks, video_swap_prob=m.lm.video_swap_prob,
                input_noise=m.lm.input_noise, beat_dropout=m.lm.beat_dropout, motion_fn=build_motion_fn(cfg))


def build_motion_fn(cfg: Config) -> tp.Optional[tp.Callable]:
    """uint8 frames [T,H,W,3] -> motion [T-1] for models with ``model.lm.motion_condition``: the same function and
    flow settings the shards' motion curves were made with (``loss.motion_flow``), so generation sees what
    training saw."""
    if not cfg.model.lm.motion_condition:
        return None
    import functools

    from vmas.alignment import video_motion

    return functools.partial(video_motion, flow=cfg.loss.motion_flow, weights=cfg.loss.motion_weights or "DEFAULT")


# ----------------------------------------------------------------------------------------------- losses
# (added with the solver split, issue 16: the training objective's config lives here like every other object's)
def build_objective(cfg: Config):
    """``L = L_ar + α · L_c`` (:class:`vmas.losses.objective.VMASObjective`) from ``loss`` and ``model.lm.n_q``.

    The contrastive head itself is part of the model (:func:`build_model`), so the objective holds no weights.
    """
    from vmas.losses.objective import VMASObjective

    return VMASObjective(n_q=cfg.model.lm.n_q, contrastive_weight=cfg.loss.contrastive_weight)
