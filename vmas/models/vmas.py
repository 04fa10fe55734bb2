"""The assembled VMAs model: video encoder -> condition fuser -> MusicGen-style LM (+ contrastive heads).

Training (``forward``) works on precomputed EnCodec codes; the codec itself stays outside this module (frozen,
never in the optimiser). Its codebooks are copied in as a buffer because the contrastive loss maps predicted
token distributions into codebook space (SPEC §5).

Inference goes through :class:`vmas.pipeline.VMASPipeline` (model + codec + generation settings), which
:func:`vmas.load_model` returns; loading and building live above this file (:mod:`vmas.hub`, :mod:`vmas.builders`).
"""
from __future__ import annotations

import dataclasses
import typing as tp

import torch
from torch import nn

from vmas.data.media import normalize_frames
from vmas.models.lm import GuidanceBranch
from vmas.modules.conditioning import ConditionFuser
from vmas.modules.patterns import DelayPattern
from vmas.sampling import SamplingParams


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
                 motion_fn: tp.Optional[tp.Callable[..., torch.Tensor]] = None):
        super().__init__()
        self.motion_fn = motion_fn  # (uint8 frames [T,H,W,3], device=) -> motion [T-1]: the motion condition's input
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
        device = self.fuser.motion_proj.weight.device  # the flow network (RAFT) runs where the model runs
        return torch.stack([self.motion_fn(f, device=str(device)) for f in frames.cpu()]).to(device)

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
                motion: tp.Optional[torch.Tensor] = None, no_video: tp.Optional[torch.Tensor] = None) -> VMASOutput:
        """frames uint8 [B,T,H,W,3], codes long [B,K,T] -> logits over the delay pattern.

        Condition dropout is drawn in training; ``drop_video`` / ``drop_tags`` / ``drop_beat`` ([B] bool) force it
        instead (the validation pass scores the null and single-condition branches this way). ``video_tokens``
        [B,Tv,C] skips the encoder (reuse one encoding for several branches). ``beat`` [B, 2]: beat grids of the
        clips' music (:func:`vmas.beat_grids.clip_grids`), used when the model has the beat condition.
        ``onsets`` [B, T] float: the music's onset frames, used only by the diagnostic onset oracle.
        ``motion`` [B, F-1]: the clips' motion curves (motion condition); None computes them from ``frames``.
        ``no_video`` [B] bool: clips without a picture (music-only training data, issue 25): their video condition
        is always the learned null one, they never lend their (blank) picture to a swap and they are not
        ``video_kept`` (no contrastive pair). Applied after the dropout draws, so the random stream is unchanged.
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
        if no_video is not None:
            no_video = no_video.to(codes.device).bool()
            drop_video = no_video if drop_video is None else (drop_video | no_video)
        swapped = self._swaps(B, tag_emb, drop_video, drop_tags, codes.device)
        if swapped is not None and no_video is not None:
            swapped = swapped & ~no_video.roll(1, dims=0)  # the picture a swap would lend is blank
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
                 neg_mask: tp.Optional[torch.Tensor] = None, sampling: tp.Optional[SamplingParams] = None, *,
                 prompt: tp.Optional[torch.Tensor] = None, generator: tp.Optional[torch.Generator] = None,
                 video_tokens: tp.Optional[torch.Tensor] = None, progress: bool = False,
                 beat: tp.Optional[torch.Tensor] = None, beat_start: int = 0,
                 onsets: tp.Optional[torch.Tensor] = None, motion: tp.Optional[torch.Tensor] = None,
                 motion_off: tp.Optional[torch.Tensor] = None, **overrides: tp.Any) -> torch.Tensor:
        """Sample codes [B,K,num_frames] for a video window (frames uint8 [B,T,H,W,3] or ``video_tokens``).

        ``sampling`` (default :class:`SamplingParams`) says how tokens are drawn and how guidance is formed; single
        fields may also be given as keywords (``cfg=1.0, top_k=5``), which override it. The guidance branches
        are chosen by :func:`guidance_branches` (``sampling.guide``).

        ``beat`` [B, 2] (NaN rows = none): requested beat grids (:func:`vmas.beat_grids.request_grids`), in
        frames of the whole video; ``beat_start`` is this window's first frame in those frames. The grid is part of
        the user's request like the tags: only the conditional branch carries it, so CFG amplifies it too.
        ``prompt`` [B,K,T0] codes are continued; ``onsets`` / ``motion`` feed the onset oracle / motion condition.
        ``motion_off`` [B] bool: clips whose motion curve is left out (zero, as training drops it), e.g. those with a
        requested tempo (:meth:`vmas.engine.WindowEngine.conditions`).
        """
        sampling = dataclasses.replace(sampling or SamplingParams(), **overrides).check()
        if video_tokens is None and frames is not None:
            video_tokens = self.encode_video(frames)
        B = video_tokens.shape[0] if video_tokens is not None else tag_emb.shape[0]
        cond, cond_mask = self.fuser(video_tokens, tag_emb, tag_mask, batch_size=B)
        S = self.pattern.num_steps(num_frames)
        guidance = guidance_branches(self.fuser, video_tokens, tag_emb, tag_mask, neg_emb, neg_mask, sampling, S, B)
        # per-step paths (video_fuse=cross+sum, beat grid); the unconditional / negative branches have no video -> zeros
        if motion is None:
            motion = self.video_motion(frames)  # [B, F-1] | None
        if motion is not None and motion_off is not None:
            motion = motion * (~motion_off.to(motion.device)).to(motion.dtype)[:, None]
        step = self.fuser.step_condition(video_tokens, S, beat=beat, start=beat_start, onsets=onsets, motion=motion)
        u = guidance.uncond
        return self.lm.generate(cond, cond_mask, None if u is None else u.cond, None if u is None else u.mask,
                                num_frames=num_frames, cfg=guidance.cfg, top_k=sampling.top_k, top_p=sampling.top_p,
                                temperature=sampling.temperature, prompt=prompt, generator=generator,
                                progress=progress, step_cond=step, uncond_step_cond=None if u is None else u.step_cond,
                                extra=guidance.extra, decode=sampling.decode)


# ------------------------------------------------------------------------------------------------------- guidance
@dataclasses.dataclass
class Guidance:
    """The guidance of one generation call: the main scale and the unconditional branches it is applied to.

    ``MusicLM.generate`` computes ``c + (cfg - 1)(c - u) + Σ_i w_i (c - u_i)`` from the main branch ``uncond``
    (weight ``cfg - 1``) and the ``extra`` branches (weights ``w_i``).
    """

    cfg: float
    uncond: tp.Optional[GuidanceBranch] = None  # None = no guidance (cfg 1)
    extra: tp.List[GuidanceBranch] = dataclasses.field(default_factory=list)


def guidance_branches(fuser: ConditionFuser, video_tokens: tp.Optional[torch.Tensor],
                      tag_emb: tp.Optional[torch.Tensor], tag_mask: tp.Optional[torch.Tensor],
                      neg_emb: tp.Optional[torch.Tensor], neg_mask: tp.Optional[torch.Tensor],
                      sampling: SamplingParams, num_steps: int, batch: int) -> Guidance:
    """The guidance policy, in one place: which unconditional branches a request is guided against.

    ``guide="all"`` (SPEC §4): the branch is the learned null condition (video and tags dropped); with negative
    tags it is "no video + negative tags", so guidance pushes away from them (SONIQUE's negative prompt).
    ``guide="tags"``, used when the user gives tags or negative tags: the branch keeps the video and drops only the
    tags (or holds the negative tags), so guidance amplifies what the user's tags change on top of the picture
    instead of amplifying the picture too (otherwise a picture that contradicts the tags is amplified as much as the
    tags are). ``guide="both"`` runs the two branches together (three-way batch):
    ``c + (cfg-1)(c - u_all) + (tag_cfg-1)(c - u_tags)``, amplifying the picture *and* what the tags add to it;
    ``tag_cfg`` (0 = ``cfg``) also replaces ``cfg`` for ``guide="tags"``. Without any tags ``guide`` makes no
    difference. ``num_steps``: LM steps of the window (the tags branch keeps the picture's per-step inputs).
    """
    cfg = sampling.cfg
    if cfg == 1.0:
        return Guidance(cfg=cfg)
    tag_cfg = sampling.tag_cfg or cfg
    every = torch.ones(batch, dtype=torch.bool, device=fuser.null_video.device)
    tag_branch = None
    if sampling.guide != "all" and (tag_emb is not None or neg_emb is not None) and video_tokens is not None:
        if neg_emb is not None:  # picture + negative tags
            t_cond, t_mask = fuser(video_tokens, neg_emb, neg_mask, batch_size=batch)
        else:  # picture, tags dropped
            t_cond, t_mask = fuser(video_tokens, tag_emb, tag_mask, drop_tags=every, batch_size=batch)
        tag_branch = GuidanceBranch(t_cond, t_mask, fuser.step_condition(video_tokens, num_steps), tag_cfg - 1.0)
        if sampling.guide == "tags":
            return Guidance(cfg=tag_cfg, uncond=tag_branch)
    if neg_emb is not None:  # no picture, negative tags
        u_cond, u_mask = fuser(video_tokens, neg_emb, neg_mask, drop_video=every, batch_size=batch)
    else:  # the learned null condition
        u_cond, u_mask = fuser(video_tokens, tag_emb, tag_mask, drop_video=every, drop_tags=every, batch_size=batch)
    return Guidance(cfg=cfg, uncond=GuidanceBranch(u_cond, u_mask, None, cfg - 1.0),
                    extra=[tag_branch] if tag_branch is not None else [])
