"""Config -> objects: the one place that reads :class:`vmas.config.Config` to build things.

Modules (encoder, codec, LM, fuser, losses) take plain keyword arguments and never see a config. One rule turns a
config section into constructor kwargs (:func:`constructor_kwargs`): every field is passed by its name (or the
name in :data:`RENAMED`) unless :data:`NOT_ARGS` declares it as read elsewhere, and a field that is neither is an
error at build time. So a new config field can never be dropped silently by a stale skip list (the bug behind
``tools/bench_generate.py``'s crash, issue 16).

Layer: above models/, modules/, losses/, tags/ and :mod:`vmas.pipeline` (it builds them); below hub / generate /
cli / solvers / tools (they call it).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import typing as tp

import torch
from torch import nn

from vmas.config import CodecConfig, Config, EncoderConfig, LMConfig, TagConfig
from vmas.errors import ConfigError
from vmas.pipeline import GenerationSpec, VMASPipeline

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- the kwargs rule
NOT_ARGS: tp.Dict[type, tp.Dict[str, str]] = {
    EncoderConfig: {"arch": "build_encoder (preset name, checked against the geometry)",
                    "pretrained": "build_encoder (weights)", "freeze": "build_encoder"},
    CodecConfig: {"pretrained": "build_codec (weights and architecture of a checkpoint)",
                  "commitment_weight": "vmas.codec_training (loss weight)"},
    LMConfig: {"pretrained": "build_lm (weights)",
               "cond_dropout": "VMAS", "tag_dropout": "VMAS", "video_swap_prob": "VMAS", "input_noise": "VMAS",
               "beat_dropout": "VMAS",
               "time_aligned_video": "build_fuser", "video_fuse": "build_fuser", "beat_condition": "build_fuser",
               "onset_oracle": "build_fuser", "motion_condition": "build_fuser, build_motion_fn"},
}
"""Per config section: the fields that are *not* arguments of the module the section builds, and who reads them."""

RENAMED: tp.Dict[type, tp.Dict[str, str]] = {
    # Codec's argument names are stored in every codec file (``Codec.kwargs``), so they stay as they are
    CodecConfig: {"ema_decay": "decay", "dead_code_threshold": "threshold_ema_dead_code"},
}
"""Per config section: field name -> constructor argument name, where the two differ."""


def constructor_kwargs(section: tp.Any, target: tp.Callable) -> tp.Dict[str, tp.Any]:
    """Keyword arguments of ``target`` from the dataclass ``section``: every field by name, except those
    :data:`NOT_ARGS` declares. Lists are copied so a module never aliases the config.

    Raises TypeError when a field is neither an argument of ``target`` nor declared (a new knob nobody reads), or
    when a declared field no longer exists (a stale declaration).
    """
    kind = type(section)
    params = inspect.signature(target).parameters
    declared = next((k for k in kind.__mro__ if k in NOT_ARGS or k in RENAMED), kind)  # a subclass extends its base
    skip, renamed = NOT_ARGS.get(declared, {}), RENAMED.get(declared, {})
    fields = {f.name for f in dataclasses.fields(section)}
    stale = sorted((set(skip) | set(renamed)) - fields)
    if stale:
        raise TypeError(f"vmas.builders declares {kind.__name__} fields {stale} that do not exist")
    kwargs: tp.Dict[str, tp.Any] = {}
    for name in sorted(fields - set(skip)):
        arg = renamed.get(name, name)
        if arg not in params:
            raise TypeError(f"{kind.__name__}.{name} is not an argument of {target.__qualname__}: pass it there, or "
                            "declare who reads it in vmas.builders.NOT_ARGS")
        value = getattr(section, name)
        kwargs[arg] = [list(v) if isinstance(v, (list, tuple)) else v for v in value] if isinstance(value, list) \
            else value
    return kwargs


# ------------------------------------------------------------------------------------------------------ encoder
def build_encoder(cfg: EncoderConfig, load_weights: bool = True) -> nn.Module:
    """``model.encoder`` -> :class:`vmas.models.hiera.VideoHiera` (+ pretrained weights, + freezing).

    The section is the full geometry. ``arch`` names the preset it is meant to be; for the real presets a geometry
    that differs from the preset is logged, so ``arch: hiera_base_16x224`` left with the VMAs default strides does
    not pass silently.
    """
    from vmas.models import hiera

    if cfg.arch not in hiera.ENCODERS:
        raise ConfigError(f"model.encoder.arch='{cfg.arch}' is unknown: use one of "
                          f"{', '.join(hiera.available_encoders())}")
    kwargs = constructor_kwargs(cfg, hiera.VideoHiera)
    if cfg.arch != "hiera_debug":
        diff = [k for k, v in hiera.PRESETS[cfg.arch].items() if v != kwargs[k]]
        if diff:
            logger.warning("model.encoder.arch=%s but %s differ from that preset; building what the config says",
                           cfg.arch, ", ".join(diff))
    model = hiera.VideoHiera(**kwargs)
    if load_weights and cfg.pretrained:
        hiera.load_hiera_weights(model, cfg.pretrained)
    if cfg.freeze:
        model.requires_grad_(False)
    return model


# -------------------------------------------------------------------------------------------------------- codec
RANDOM_CODEC_SEED = 0
"""Seed of every random (untrained) codec. Its weights define the tokens written into shards, so the solver, the
shard writer, ``tools/train.py``, the export and a debug model must all get the same codec (issue 16)."""


def codec_kwargs(cfg: CodecConfig) -> tp.Dict[str, tp.Any]:
    """:class:`vmas.models.codec.Codec` arguments from ``model.codec`` (also used by codec training)."""
    from vmas.models.codec import Codec

    return constructor_kwargs(cfg, Codec)


def build_codec(cfg: CodecConfig, load_weights: bool = True) -> nn.Module:
    """``model.codec`` -> a frozen :class:`vmas.models.codec.Codec` in eval mode (it tokenizes the data and decodes
    generations; it is never trained here).

    With ``pretrained`` (and ``load_weights``) the checkpoint decides the architecture; the config's ``n_q``,
    ``bins`` and ``sample_rate`` must agree with it because the LM's vocabulary and the data are sized from them.
    Otherwise the codec is random and seeded with :data:`RANDOM_CODEC_SEED`, whatever the caller's seed.
    """
    from vmas.models.codec import load_pretrained_codec

    if cfg.pretrained and load_weights:
        model = load_pretrained_codec(cfg.pretrained)
        got = (model.n_q, model.card, model.sample_rate)
        want = (cfg.n_q, cfg.bins, cfg.sample_rate)
        if got != want:
            raise ConfigError(f"codec '{cfg.pretrained}' has (n_q, bins, sample_rate) = {got} but model.codec says "
                              f"{want}: set model.codec.n_q/bins/sample_rate to {got}")
    else:
        model = _random_codec(codec_kwargs(cfg))
    model.requires_grad_(False)
    return model.eval()


def build_codec_to_train(cfg: CodecConfig) -> nn.Module:
    """A fresh, trainable codec of ``model.codec``'s architecture for the codec trainer
    (``vmas.codec_training``): weights from the caller's random stream (``train.seed``), codebooks initialised by
    k-means on the first batch (``kmeans_init``), unlike :func:`build_codec`'s frozen tokenizer."""
    from vmas.models.codec import Codec

    return Codec(**codec_kwargs(cfg), kmeans_init=True)


def _random_codec(kwargs: tp.Dict[str, tp.Any]) -> nn.Module:
    """A codec with the weights of ``Codec(**kwargs)`` built right after ``torch.manual_seed(RANDOM_CODEC_SEED)``.

    It is first built from the caller's random stream and then overwritten: that leaves the stream where building a
    codec always left it, so a model built after the codec under a given ``train.seed`` is the same as before this
    rule existed (runs stay reproducible), while the codec no longer depends on that seed.
    """
    from vmas.models.codec import Codec

    codec = Codec(**kwargs)
    if any(p.is_meta for p in codec.parameters()):  # sizes only (tools/estimate_memory.py): nothing to seed
        return codec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_CODEC_SEED)
        seeded = Codec(**kwargs)
    codec.load_state_dict(seeded.state_dict())
    return codec


# ----------------------------------------------------------------------------------------------------------- LM
def build_lm(cfg: LMConfig, load_weights: bool = True) -> nn.Module:
    """``model.lm`` -> :class:`vmas.models.lm.MusicLM` (+ MusicGen weights when ``pretrained``)."""
    from vmas.models.lm import MusicLM, load_musicgen_lm_weights

    model = MusicLM(**constructor_kwargs(cfg, MusicLM))
    if load_weights and cfg.pretrained:
        load_musicgen_lm_weights(model, cfg.pretrained)
    return model


# --------------------------------------------------------------------------------------------------- conditions
def build_fuser(cfg: Config, video_dim: int) -> nn.Module:
    """:class:`vmas.modules.conditioning.ConditionFuser` for an encoder of width ``video_dim``.

    Its arguments are derived from several sections (LM width, tag width, the window's LM steps, the video path),
    so they are spelled out here rather than matched by name.
    """
    from vmas.modules.conditioning import ConditionFuser

    m = cfg.model
    steps = cfg.data.clip_seconds * cfg.data.frame_rate if m.lm.time_aligned_video else 0.0  # LM steps per window
    if m.lm.video_fuse not in ("cross", "cross+sum", "cross+interp"):
        raise ConfigError(f"model.lm.video_fuse: unknown '{m.lm.video_fuse}' (use cross, cross+sum or cross+interp)")
    if m.lm.video_fuse != "cross" and not steps:
        raise ConfigError(f"model.lm.video_fuse={m.lm.video_fuse} needs model.lm.time_aligned_video=true")
    return ConditionFuser(video_dim=video_dim, dim=m.lm.dim, tag_dim=m.tags.text_dim if m.tags.enabled else 0,
                          steps_per_clip=steps, step_video=m.lm.video_fuse != "cross",
                          beat_grid=m.lm.beat_condition, step_interp=m.lm.video_fuse == "cross+interp",
                          onset_oracle=m.lm.onset_oracle,
                          motion_fps=cfg.data.fps if m.lm.motion_condition else 0.0,
                          frame_rate=cfg.data.frame_rate)


def build_motion_fn(cfg: Config) -> tp.Optional[tp.Callable]:
    """``(uint8 frames [T,H,W,3], device=...) -> motion [T-1]`` for models with ``model.lm.motion_condition``: the
    same function and flow settings the shards' motion curves were made with (``loss.motion_flow``), so generation
    sees what training saw. ``device`` is where RAFT runs (the model's: ``VMAS.video_motion`` passes it)."""
    if not cfg.model.lm.motion_condition:
        return None
    from vmas.alignment import video_motion

    return functools.partial(video_motion, flow=cfg.loss.motion_flow, weights=cfg.loss.motion_weights or "DEFAULT")


def build_text_encoder(cfg: TagConfig, device: tp.Union[str, torch.device] = "cpu") -> tp.Optional[nn.Module]:
    """The frozen tag text encoder named by ``model.tags.text_encoder`` (None when the tag branch is off)."""
    if not cfg.enabled:
        return None
    from vmas.tags.text_encoder import load_text_encoder

    return load_text_encoder(cfg.text_encoder, device=device)


# ------------------------------------------------------------------------------------------------------- model
def build_model(cfg: Config, codec: tp.Optional[nn.Module] = None, load_weights: bool = True) -> nn.Module:
    """Assemble :class:`vmas.models.vmas.VMAS`; ``codec`` supplies the codebooks for the contrastive heads."""
    from vmas.models.vmas import VMAS

    m = cfg.model
    encoder = build_encoder(m.encoder, load_weights)
    lm = build_lm(m.lm, load_weights)
    fuser = build_fuser(cfg, encoder.out_dim)
    codebooks = None
    if codec is not None:
        codebooks = codec.codebooks()  # [K, card, D]
        if codebooks.shape[:2] != (m.lm.n_q, m.lm.card):
            raise ConfigError(f"codec has {tuple(codebooks.shape[:2])} (n_q, bins) but model.lm expects "
                              f"({m.lm.n_q}, {m.lm.card}): make model.codec.n_q/bins match model.lm.n_q/card")
    music_dim = codebooks.shape[-1] if codebooks is not None else m.codec.dimension
    return VMAS(encoder, lm, fuser, contrastive=build_contrastive(cfg, encoder.out_dim, music_dim),
                codebooks=codebooks, motion_fn=build_motion_fn(cfg), cond_dropout=m.lm.cond_dropout,
                tag_dropout=m.lm.tag_dropout, video_swap_prob=m.lm.video_swap_prob, input_noise=m.lm.input_noise,
                beat_dropout=m.lm.beat_dropout)


# ------------------------------------------------------------------------------------------------------ losses
def build_contrastive(cfg: Config, video_dim: int, music_dim: int) -> tp.Optional[nn.Module]:
    """The contrastive heads (:class:`vmas.losses.ContrastiveLoss`) when ``loss.contrastive_weight > 0``; they are
    part of the model so that they are checkpointed with it and reused by the retrieval metric."""
    if cfg.loss.contrastive_weight <= 0:
        return None
    return build_contrastive_heads(cfg, video_dim, music_dim)


def build_contrastive_heads(cfg: Config, video_dim: int, music_dim: int) -> nn.Module:
    """Fresh contrastive heads of ``loss`` whatever ``loss.contrastive_weight`` says: what the retrieval score of a
    model trained without them uses (``vmas.experiments.scoring.retrieval_r1``: chance, as it should be)."""
    from vmas.losses import ContrastiveLoss

    return ContrastiveLoss(video_dim=video_dim, music_dim=music_dim, proj_dim=cfg.loss.contrastive_dim,
                           temperature_init=cfg.loss.contrastive_temperature,
                           min_temperature=cfg.loss.contrastive_min_temperature)


# (added with the solver split, issue 16: the training objective's config lives here like every other object's)
def build_objective(cfg: Config):
    """``L = L_ar + α · L_c`` (:class:`vmas.losses.objective.VMASObjective`) from ``loss`` and ``model.lm.n_q``.

    The contrastive head itself is part of the model (:func:`build_model`), so the objective holds no weights.
    """
    from vmas.losses.objective import VMASObjective

    return VMASObjective(n_q=cfg.model.lm.n_q, contrastive_weight=cfg.loss.contrastive_weight)


# ---------------------------------------------------------------------------------------------------- inference
def build_generation_spec(cfg: Config) -> GenerationSpec:
    """The settings generation reads (window, frames, tags, beat grids, default sampling) out of the config."""
    tags, gen = cfg.model.tags, cfg.generation
    return GenerationSpec(window_seconds=cfg.data.clip_seconds, fps=cfg.data.fps, image_size=cfg.data.image_size,
                          sampling=gen.sampling, tags=tags.enabled, max_tags=tags.max_tags, captioner=tags.captioner,
                          llm=tags.llm, beat_condition=cfg.model.lm.beat_condition,
                          beat_from_video=gen.beat_from_video)


def build_pipeline(cfg: Config, model: tp.Optional[nn.Module] = None, codec: tp.Optional[nn.Module] = None,
                   note: str = "") -> VMASPipeline:
    """The inference bundle of ``cfg``: ``model`` / ``codec`` as given (loaded weights), else built (random or
    pretrained parts, as the config says). Eval mode; the text encoder is built on first use."""
    codec = codec if codec is not None else build_codec(cfg.model.codec)
    model = model if model is not None else build_model(cfg, codec=codec)
    return VMASPipeline(model=model.eval(), codec=codec.eval(), spec=build_generation_spec(cfg), config=cfg,
                        note=note, text_encoder_factory=functools.partial(build_text_encoder, cfg.model.tags))
