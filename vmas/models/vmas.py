"""The assembled VMAs model: video encoder -> condition fuser -> MusicGen-style LM (+ contrastive heads).

Training (``forward``) works on precomputed EnCodec codes; the codec itself stays outside this module (frozen,
never in the optimiser). Its codebooks are copied in as a buffer because the contrastive loss maps predicted
token distributions into codebook space (SPEC §5).

Inference goes through :class:`VMASPipeline`, which bundles the model with its codec, config and (lazily) the tag
text encoder, and is what :func:`vmas.load_model` returns.
"""
from __future__ import annotations

import dataclasses
import typing as tp
from pathlib import Path

import torch
from torch import nn

from vmas.data.media import normalize_frames
from vmas.errors import CheckpointError
from vmas.modules.conditioning import ConditionFuser
from vmas.modules.patterns import DelayPattern


@dataclasses.dataclass
class VMASOutput:
    logits: torch.Tensor  # [B, K, S, card]
    valid: torch.Tensor  # [K, S] bool: pattern positions that hold a real code
    seq: torch.Tensor  # [B, K, S] long: pattern sequence (targets; special token where not valid)
    video_tokens: torch.Tensor  # [B, Tv, C] encoder output (before projection), for the contrastive loss
    cond_mask: torch.Tensor  # [B, L] bool
    video_kept: torch.Tensor  # [B] bool: False where the video condition was dropped (CFG) or swapped for another
    # clip's; the contrastive loss should only pair logits with videos they were conditioned on


class VMAS(nn.Module):
    """Video-to-music model.

    Args:
        encoder (nn.Module): video encoder, ``[B,3,T,H,W] -> [B,Tv,C]`` with attribute ``out_dim``.
        lm (nn.Module): :class:`vmas.models.lm.MusicLM`.
        fuser (ConditionFuser): projects video (and tag) tokens to the LM width, owns the learned null condition.
        contrastive (nn.Module, optional): :class:`vmas.losses.ContrastiveLoss` (its heads live here so that they
            are checkpointed with the model and reused by the retrieval metric).
        cond_dropout (float): probability to drop the video condition per sample in training (CFG).
        tag_dropout (float): probability to drop the tag condition per sample in training, independent of video.
        codebooks (Tensor, optional): [K, card, D] EnCodec codebooks for the contrastive loss.
        video_swap_prob (float): probability that a training clip with both conditions kept sees another clip's
            video (see :meth:`_swaps`); such clips are left out of the contrastive loss.
        input_noise (float): probability of replacing each input code by a random one in training
            (:meth:`_corrupt`).
        beat_dropout (float): probability to drop a clip's beat grid in training (tempo control; used when the
            fuser has ``beat_grid``), independent of video and tags.
    """

    def __init__(self, encoder: nn.Module, lm: nn.Module, fuser: ConditionFuser,
                 contrastive: tp.Optional[nn.Module] = None, cond_dropout: float = 0.3, tag_dropout: float = 0.3,
                 codebooks: tp.Optional[torch.Tensor] = None, video_swap_prob: float = 0.0,
                 input_noise: float = 0.0, beat_dropout: float = 0.5,
                 motion_fn: tp.Optional[tp.Callable[[torch.Tensor], torch.Tensor]] = None):
        super().__init__()
        self.motion_fn = motion_fn  # uint8 frames [T,H,W,3] -> motion [T-1], for models with the motion condition
        self.beat_dropout = beat_dropout
        self.video_swap_prob = video_swap_prob
        self.input_noise = input_noise
        self.encoder = encoder
        self.lm = lm
        self.fuser = fuser
        self.contrastive = contrastive
        self.cond_dropout = cond_dropout
        self.tag_dropout = tag_dropout
        self.pattern = DelayPattern(lm.n_q)
        self.register_buffer("codebooks", codebooks if codebooks is not None else torch.zeros(0), persistent=False)

    @property
    def n_q(self) -> int:
        return self.lm.n_q

    @property
    def card(self) -> int:
        return self.lm.card

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """frames uint8 [B,T,H,W,3] (or already-normalised float [B,3,T,H,W]) -> tokens [B,Tv,C]."""
        if frames.dtype == torch.uint8:
            frames = normalize_frames(frames)
        param = next(self.encoder.parameters())
        return self.encoder(frames.to(device=param.device, dtype=param.dtype))

    def video_motion(self, frames: tp.Optional[torch.Tensor]) -> tp.Optional[torch.Tensor]:
        """Motion curves [B, T-1] of uint8 frames [B,T,H,W,3] for the motion condition (None when the model has
        none, or no frames are given). Training passes the shards' precomputed curves instead (same function)."""
        if self.fuser.motion_proj is None or frames is None:
            return None
        if self.motion_fn is None:
            raise ValueError("this model has the motion condition but no motion_fn: build it with vmas.builders")
        return torch.stack([self.motion_fn(f) for f in frames.cpu()]).to(self.fuser.motion_proj.weight.device)

    def _drops(self, batch: int, p: float, device: torch.device) -> tp.Optional[torch.Tensor]:
        if not self.training or p <= 0:
            return None
        return torch.rand(batch, device=device) < p

    def _corrupt(self, seq: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Training only: replace each real input code with a random one with probability ``input_noise``.

        The targets stay clean (``VMASOutput.seq``). Why: on music with a steady beat, teacher forcing lets the LM
        predict almost every onset from the ones before it, so the video's timing is worth little to the loss
        and is not learned; a noisy history makes the condition carry more of the prediction.
        """
        if not self.training or self.input_noise <= 0:
            return seq
        noise = torch.randint_like(seq, self.card)
        hit = (torch.rand(seq.shape, device=seq.device) < self.input_noise) & valid  # [B, K, S]
        return torch.where(hit, noise, seq)

    def _swaps(self, batch: int, tag_emb: tp.Optional[torch.Tensor], drop_video: tp.Optional[torch.Tensor],
               drop_tags: tp.Optional[torch.Tensor], device: torch.device) -> tp.Optional[torch.Tensor]:
        """[B] bool: clips (training only, tags and video both kept) whose video is replaced by another clip's.

        Why: in real data tags and picture agree, so a model never learns who wins when a user's tags contradict
        the video (SONIQUE's override: "make it bells"). Showing it, with probability ``video_swap_prob``, a
        picture that disagrees with its tags and music teaches that the tags decide.
        """
        if not self.training or self.video_swap_prob <= 0 or tag_emb is None or batch < 2:
            return None
        swap = torch.rand(batch, device=device) < self.video_swap_prob
        if drop_video is not None:
            swap &= ~drop_video
        if drop_tags is not None:
            swap &= ~drop_tags
        return swap

    def forward(self, frames: tp.Optional[torch.Tensor], codes: torch.Tensor, tag_emb: tp.Optional[torch.Tensor] = None,
                tag_mask: tp.Optional[torch.Tensor] = None, drop_video: tp.Optional[torch.Tensor] = None,
                drop_tags: tp.Optional[torch.Tensor] = None,
                video_tokens: tp.Optional[torch.Tensor] = None, beat: tp.Optional[torch.Tensor] = None,
                drop_beat: tp.Optional[torch.Tensor] = None, onsets: tp.Optional[torch.Tensor] = None,
                motion: tp.Optional[torch.Tensor] = None) -> VMASOutput:
        """frames uint8 [B,T,H,W,3], codes long [B,K,T] -> logits over the delay pattern.

        Condition dropout is drawn in training; ``drop_video`` / ``drop_tags`` / ``drop_beat`` ([B] bool) force it
        instead (the validation pass scores the null and single-condition branches this way). ``video_tokens``
        [B,Tv,C] skips the encoder (reuse one encoding for several branches). ``beat`` [B, 2]: beat grids of the
        clips' music (:func:`vmas.beat_grids.clip_grids`), used when the model has the beat condition.
        ``onsets`` [B, T] float: the music's onset frames, used only by the diagnostic onset oracle.
        ``motion`` [B, F-1]: the clips' motion curves (motion condition); None computes them from ``frames``.
        """
        B, K, T = codes.shape
        assert K == self.n_q, f"expected {self.n_q} codebooks, got {K}"
        if motion is None:
            motion = self.video_motion(frames)
        if video_tokens is None:
            video_tokens = self.encode_video(frames)  # [B, Tv, C]
        if drop_video is None:
            drop_video = self._drops(B, self.cond_dropout, codes.device)
        if drop_tags is None:
            drop_tags = self._drops(B, self.tag_dropout, codes.device)
        if drop_beat is None and beat is not None:
            drop_beat = self._drops(B, self.beat_dropout, codes.device)
        swapped = self._swaps(B, tag_emb, drop_video, drop_tags, codes.device)
        if swapped is not None:  # these clips see the next clip's picture but keep their own tags and music
            video_tokens = torch.where(swapped[:, None, None], video_tokens.roll(1, dims=0), video_tokens)
        cond, cond_mask = self.fuser(video_tokens, tag_emb, tag_mask, drop_video=drop_video, drop_tags=drop_tags)
        seq, valid = self.pattern.build(codes, self.card)  # [B, K, S], [K, S]
        step = self.fuser.step_condition(video_tokens, seq.shape[-1], drop_video, beat, drop_beat,
                                         onsets=onsets, motion=motion)  # [B, S, dim] | None
        logits = self.lm(self._corrupt(seq, valid), cond, cond_mask, step)  # [B, K, S, card]
        kept = torch.ones(B, dtype=torch.bool, device=codes.device) if drop_video is None else ~drop_video
        if swapped is not None:
            kept = kept & ~swapped
        return VMASOutput(logits=logits, valid=valid, seq=seq, video_tokens=video_tokens, cond_mask=cond_mask,
                          video_kept=kept)

    @torch.no_grad()
    def generate(self, frames: tp.Optional[torch.Tensor], num_frames: int, tag_emb: tp.Optional[torch.Tensor] = None,
                 tag_mask: tp.Optional[torch.Tensor] = None, neg_emb: tp.Optional[torch.Tensor] = None,
                 neg_mask: tp.Optional[torch.Tensor] = None, cfg: float = 3.0, top_k: int = 250, top_p: float = 0.0,
                 temperature: float = 1.0, prompt: tp.Optional[torch.Tensor] = None,
                 generator: tp.Optional[torch.Generator] = None, video_tokens: tp.Optional[torch.Tensor] = None,
                 progress: bool = False, guide: str = "all", beat: tp.Optional[torch.Tensor] = None,
                 beat_start: int = 0, tag_cfg: float = 0.0, onsets: tp.Optional[torch.Tensor] = None,
                 motion: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sample codes [B,K,num_frames] for a video window.

        ``guide="all"`` (SPEC §4): the CFG branch is the learned null condition (video and tags dropped); with
        negative tags it is "no video + negative tags", so guidance pushes away from them (SONIQUE's negative
        prompt). ``guide="tags"``, used when the user gives tags or negative tags: the CFG branch keeps the video
        and drops only the tags (or holds the negative tags), so guidance amplifies what the user's tags change on
        top of the picture instead of amplifying the picture too (otherwise a picture that contradicts the tags
        is amplified as much as the tags are). ``guide="both"`` runs the two branches together (three-way batch):
        ``c + (cfg-1)(c - u_all) + (tag_cfg-1)(c - u_tags)``, amplifying the picture *and* what the tags add to
        it; ``tag_cfg`` (0 = ``cfg``) also replaces ``cfg`` for ``guide="tags"``. Without any tags ``guide`` makes
        no difference.

        ``beat`` [B, 2] (NaN rows = none): requested beat grids (:func:`vmas.beat_grids.request_grids`), in
        frames of the whole video; ``beat_start`` is this window's first frame in those frames. The grid is part of
        the user's request like the tags: only the conditional branch carries it, so CFG amplifies it too.
        """
        if guide not in ("all", "tags", "both"):
            raise ValueError(f"guide must be 'all', 'tags' or 'both', not {guide!r}")
        if video_tokens is None and frames is not None:
            video_tokens = self.encode_video(frames)
        B = video_tokens.shape[0] if video_tokens is not None else tag_emb.shape[0]
        dev = self.fuser.null_video.device
        cond, cond_mask = self.fuser(video_tokens, tag_emb, tag_mask, batch_size=B)
        uncond = uncond_mask = uncond_step = None
        extra = []
        S = self.pattern.num_steps(num_frames)
        tag_cfg = tag_cfg or cfg
        if cfg != 1.0:
            all_drop = torch.ones(B, dtype=torch.bool, device=dev)
            tag_guided = guide != "all" and (tag_emb is not None or neg_emb is not None) and video_tokens is not None
            if tag_guided:
                if neg_emb is not None:  # picture + negative tags
                    t_unc, t_mask = self.fuser(video_tokens, neg_emb, neg_mask, batch_size=B)
                else:  # picture, tags dropped
                    t_unc, t_mask = self.fuser(video_tokens, tag_emb, tag_mask, drop_tags=all_drop, batch_size=B)
                t_step = self.fuser.step_condition(video_tokens, S)
            if tag_guided and guide == "tags":
                uncond, uncond_mask, uncond_step = t_unc, t_mask, t_step
                cfg = tag_cfg
            elif neg_emb is not None:
                uncond, uncond_mask = self.fuser(video_tokens, neg_emb, neg_mask, drop_video=all_drop, batch_size=B)
            else:
                uncond, uncond_mask = self.fuser(video_tokens, tag_emb, tag_mask, drop_video=all_drop,
                                                 drop_tags=all_drop, batch_size=B)
            if tag_guided and guide == "both":
                extra = [(t_unc, t_mask, t_step, tag_cfg - 1.0)]
        # per-step paths (video_fuse=cross+sum, beat grid); the unconditional / negative branches have no video -> zeros
        if motion is None:
            motion = self.video_motion(frames)
        step = self.fuser.step_condition(video_tokens, S, beat=beat, start=beat_start, onsets=onsets, motion=motion)
        return self.lm.generate(cond, cond_mask, uncond, uncond_mask, num_frames=num_frames, cfg=cfg, top_k=top_k,
                                top_p=top_p, temperature=temperature, prompt=prompt, generator=generator,
                                progress=progress, step_cond=step, uncond_step_cond=uncond_step, extra=extra)


# ----------------------------------------------------------------------------------------------- inference bundle
@dataclasses.dataclass
class VMASPipeline:
    """Everything inference needs: model (EMA weights, eval mode), codec, config, and a note on provenance."""

    model: VMAS
    codec: nn.Module
    config: tp.Any
    note: str = ""
    text_encoder: tp.Any = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def get_text_encoder(self):
        """The tag text encoder named by the config (built on first use; None when the tag branch is off)."""
        if self.text_encoder is None and self.config.model.tags.enabled:
            from vmas.tags.text_encoder import build_text_encoder

            self.text_encoder = build_text_encoder(self.config.model.tags.text_encoder, device=self.device)
        return self.text_encoder


def load_pretrained(path: tp.Union[str, Path, None], device: str = "cpu", config=None,
                    random_note: str = "") -> VMASPipeline:
    """Load an inference checkpoint ``{"config", "model", "codec", "meta"}`` (see docs/training.md).

    ``path=None`` with a ``config`` builds a random-weight model of that config (debug / plumbing only) and says so.
    """
    from vmas.builders import build_codec, build_model
    from vmas.config import config_from_dict

    if path is None:
        cfg = config
        codec = build_codec(cfg.model.codec)
        model = build_model(cfg, codec=codec)
        note = f"WARNING: {random_note or 'random weights'}"
    else:
        path = Path(path)
        if path.is_dir():
            candidates = sorted(path.glob("*.pt"))
            if not candidates:
                raise CheckpointError(f"{path}: no .pt checkpoint inside (export one with tools/train.py --export)")
            path = candidates[-1]
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unpickling problem is a bad checkpoint for the user
            raise CheckpointError(f"{path}: not a readable vmas checkpoint ({type(err).__name__}: {err})") from None
        if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
            raise CheckpointError(f"{path}: not a vmas inference checkpoint (expected keys config/model/codec; "
                                  "export one with tools/train.py --export)")
        cfg = config_from_dict(ckpt["config"], source=str(path))
        codec = build_codec(cfg.model.codec, load_weights=False)
        if ckpt.get("codec") is not None:
            codec.load_state_dict(ckpt["codec"])
        model = build_model(cfg, codec=codec, load_weights=False)
        from vmas.loading import load_state_dict_strict

        load_state_dict_strict(model, ckpt["model"], f"{path}: weights do not fit the config")
        note = ckpt.get("meta", {}).get("note", "")
    model.to(device).eval()
    codec.to(device).eval()
    return VMASPipeline(model=model, codec=codec, config=cfg, note=note)
