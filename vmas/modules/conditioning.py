"""Condition fuser: video tokens (+ tag tokens) -> the key/value sequence the music LM cross-attends to.

Why a learned null condition: classifier-free guidance needs an unconditional branch the model has actually been
trained on. In training, each sample's video condition (and, independently, its tag condition) is replaced by a
learned null token with probability ``cond_dropout`` / ``tag_dropout`` (SPEC §4: p = 0.3). The same fuser builds
the unconditional branch at inference by dropping everything, or a *negative* branch by dropping the video and
putting the negative tags in the tag slots.

Layout of the output sequence (per sample)::

    [ video slots (Tv) | tag slots (Nt) ]      cond [B, Tv + Nt, dim], cond_mask [B, Tv + Nt] (True = attend)

A dropped part keeps its slots but only the first holds the null token; the rest are masked out. Keeping a fixed
layout means one batch can mix dropped and kept samples without padding logic.
"""
from __future__ import annotations

import typing as tp

import torch
from torch import nn

from vmas.modules import rhythm
from vmas.modules.transformer import sin_embedding

MOTION_OFFSETS = (-0.12, -0.06, 0.0, 0.06, 0.12, 0.18)
"""Seconds around each LM step at which the motion condition samples the video's motion curve. The curve has one
value per pair of model frames (104 ms apart at 9.6 fps), so a step must see the change before and after its own
time to place a note inside the gap between two frames; the window leans ahead because a change becomes visible
only at the later frame of its pair."""


def motion_features(motion: torch.Tensor, fps: float, frame_rate: float, num_steps: int, start: int = 0
                    ) -> torch.Tensor:
    """Per-step samples of a window's motion curve: motion [B, F-1] -> float [B, num_steps, len(MOTION_OFFSETS)].

    ``motion[:, i]`` (the change between model frames ``i`` and ``i + 1``, :func:`vmas.alignment.video_motion`)
    is placed at the midpoint of the two frames, ``(i + 0.5) / fps`` s: given only that the picture changed between
    them, the change's expected time. Each clip's curve is divided by its maximum (flow magnitudes depend on the
    picture size and the flow method; the condition should carry *when*, not how much), then sampled by linear
    interpolation at ``(start + s) / frame_rate + o`` for each offset ``o``; zero outside the curve.
    """
    B, n = motion.shape
    m = motion.float() / motion.float().amax(dim=1, keepdim=True).clamp_min(1e-6)  # [B, F-1] in [0, 1]
    t = (torch.arange(num_steps, device=motion.device, dtype=torch.float32) + start) / frame_rate  # [S]
    q = (t[:, None] + torch.tensor(MOTION_OFFSETS, device=motion.device)[None]) * fps - 0.5  # [S, O] curve index
    inside = (q >= 0) & (q <= n - 1)
    i0 = q.floor().clamp(0, n - 1).long()
    i1 = (i0 + 1).clamp(max=n - 1)
    w = (q - i0).clamp(0, 1)
    vals = m[:, i0] * (1 - w) + m[:, i1] * w  # [B, S, O]
    return vals * inside.to(vals.dtype)


class ConditionFuser(nn.Module):
    """Project video / tag embeddings to the LM width and apply CFG dropout with learned null tokens.

    Args:
        video_dim (int): width of the video encoder tokens (768 for Hiera-B).
        dim (int): LM width.
        tag_dim (int): width of tag text embeddings (512 for CLAP); 0 disables the tag branch.
        video_positions (bool): add sinusoidal time positions to the projected video tokens, so cross-attention
            can tell *when* a visual event happens (the LM's keys are otherwise an unordered set).
        steps_per_clip (float): LM steps (codec frames) one window of video tokens spans, e.g. 10 s x 50 Hz = 500.
            When set, video token ``i`` of ``Tv`` gets the position of the centre of its time span in *LM steps*,
            ``(i + 0.5) * steps_per_clip / Tv``, in the LM's own sinusoidal table: the query of music step ``s`` and
            the key of the video token covering time ``s`` then carry the same phases, and attending "to now" is a
            near-identity map instead of a rate conversion the model must learn (48 tokens vs 500 steps). 0 = the
            token index (the behaviour of checkpoints trained before this option).
        step_video (bool): also build a per-step condition (:meth:`step_condition`): the video token covering the
            time of LM step ``s`` (its own projection) is *added* to the LM input at ``s``, as MusicGen's
            ``input_interpolate`` fuse mode does for melody. Cross-attention still sees every token; the added
            path hands each step its own moment of the video, so "a note starts where the picture jumps" is a
            local rule instead of an attention lookup the LM must discover (on SynthMV, cross-attention alone
            learned the scene class but not the timing in 1500 steps). Needs ``steps_per_clip``.
        beat_grid (bool): also add a beat grid to the per-step condition (tempo control, :mod:`vmas.modules.rhythm`):
            the grid's phase features at each step's frame through a bias-free linear map, so "no grid" (zeros) adds
            nothing and is the CFG branches' null.
        step_interp (bool): with ``step_video``, interpolate the projected tokens linearly between token centres
            instead of holding the covering token for its whole span (MusicGen's ``input_interpolate``): a token
            spans 10-20 LM steps, and a held token tells no step where inside that span it is, while the blend
            weight does (issue 17).
        onset_oracle (bool): diagnostic only: also add the *music's own* onsets at each step (``onsets`` [B, S],
            1 at an onset frame) through a bias-free linear map. It is what a perfect video path could hand the LM;
            training with it separates "the encoder does not carry timing" from "the LM cannot use timing".
        motion_fps (float): > 0 adds the video's motion curve (at this frame rate) to each step
            (:func:`motion_features`, a bias-free linear map, dropped with the video). Why: on SynthMV with an
            unpredictable rhythm, neither cross-attention to the learned video tokens nor the tokens added per step
            carried note timing to the LM within the budget, while the onset oracle did (docs/synthmv_results.md);
            the motion curve, which the beat-weighted loss already computes from the picture, carries it.
        frame_rate (float): LM steps per second (for ``motion_fps``).
    """

    def __init__(self, video_dim: int, dim: int, tag_dim: int = 0, video_positions: bool = True,
                 steps_per_clip: float = 0.0, step_video: bool = False, beat_grid: bool = False,
                 step_interp: bool = False, onset_oracle: bool = False, motion_fps: float = 0.0,
                 frame_rate: float = 50.0):
        super().__init__()
        if step_video and not steps_per_clip:
            raise ValueError("step_video needs steps_per_clip (the LM steps one video window spans)")
        self.dim = dim
        self.tag_dim = tag_dim
        self.video_positions = video_positions
        self.steps_per_clip = float(steps_per_clip)
        self.step_interp = step_interp
        self.video_proj = nn.Linear(video_dim, dim)
        self.null_video = nn.Parameter(torch.randn(dim) * 0.02)
        self.step_proj = nn.Linear(video_dim, dim) if step_video else None
        self.beat_proj = nn.Linear(rhythm.NUM_FEATURES, dim, bias=False) if beat_grid else None
        self.onset_proj = nn.Linear(1, dim, bias=False) if onset_oracle else None
        self.motion_fps, self.frame_rate = float(motion_fps), float(frame_rate)
        self.motion_proj = nn.Linear(len(MOTION_OFFSETS), dim, bias=False) if motion_fps > 0 else None
        if tag_dim:
            self.tag_proj = nn.Linear(tag_dim, dim)
            self.null_tags = nn.Parameter(torch.randn(dim) * 0.02)

    def video_token_positions(self, num_tokens: int, device: tp.Optional[torch.device] = None) -> torch.Tensor:
        """[Tv] float positions of the video tokens (LM steps when ``steps_per_clip`` is set, else indices)."""
        idx = torch.arange(num_tokens, device=device, dtype=torch.float32)
        return (idx + 0.5) * (self.steps_per_clip / num_tokens) if self.steps_per_clip else idx

    def step_condition(self, video: tp.Optional[torch.Tensor], num_steps: int,
                       drop_video: tp.Optional[torch.Tensor] = None, beat: tp.Optional[torch.Tensor] = None,
                       drop_beat: tp.Optional[torch.Tensor] = None, start: int = 0,
                       onsets: tp.Optional[torch.Tensor] = None,
                       motion: tp.Optional[torch.Tensor] = None) -> tp.Optional[torch.Tensor]:
        """The per-step additive condition [B, num_steps, dim], or None when no per-step path applies.

        Video (``step_video``): step ``s`` gets the projected token whose span holds LM frame ``s`` (token
        ``floor(s * Tv / steps_per_clip)``, clamped), or with ``step_interp`` the linear blend of the two tokens
        whose centres enclose ``s``; zeros for dropped videos (the CFG branches carry no video).
        Beat (``beat_grid``): ``beat`` [B, 2] grids (see :mod:`vmas.modules.rhythm`; NaN rows and ``drop_beat``
        give zeros), evaluated at frames ``start + s`` (``start``: the window's first frame in the grid's frames).
        Oracle (``onset_oracle``): ``onsets`` [B, >=S'] float, the music's onset frames of this window (dropped
        with the video: it stands in for a perfect video path).
        Motion (``motion_fps``): ``motion`` [B, F-1], the window's motion curve (:func:`motion_features`; dropped
        with the video). ``start`` offsets the beat grid only: a motion curve always belongs to its own window.
        """
        out = None
        if self.step_proj is not None and video is not None:
            Tv = video.shape[1]
            proj = self.step_proj(video)  # [B, Tv, dim]
            pos = torch.arange(num_steps, device=video.device, dtype=torch.float32) * Tv / self.steps_per_clip
            if self.step_interp:  # token i's centre is at i + 0.5 in token units
                u = (pos - 0.5).clamp(0, Tv - 1)
                i0 = u.floor().long().clamp(max=Tv - 1)
                i1 = (i0 + 1).clamp(max=Tv - 1)
                w = (u - i0).to(proj.dtype)[None, :, None]  # [1, S, 1]
                out = proj[:, i0] * (1 - w) + proj[:, i1] * w  # [B, S, dim]
            else:
                out = proj[:, pos.long().clamp(max=Tv - 1)]  # [B, S, dim]
            if drop_video is not None:
                out = out * (~drop_video.to(out.device)).to(out.dtype)[:, None, None]
        if self.onset_proj is not None and onsets is not None:
            feats = torch.zeros(onsets.shape[0], num_steps, 1, device=self.onset_proj.weight.device)
            n = min(num_steps, onsets.shape[1])
            feats[:, :n, 0] = onsets[:, :n].to(feats)
            if drop_video is not None:
                feats = feats * (~drop_video.to(feats.device)).float()[:, None, None]
            o = self.onset_proj(feats.to(self.onset_proj.weight.dtype))  # [B, S, dim]
            out = o if out is None else out + o.to(out.dtype)
        if self.motion_proj is not None and motion is not None:
            feats = motion_features(motion.to(self.motion_proj.weight.device), self.motion_fps, self.frame_rate,
                                    num_steps)  # [B, S, O]
            if drop_video is not None:
                feats = feats * (~drop_video.to(feats.device)).float()[:, None, None]
            mo = self.motion_proj(feats.to(self.motion_proj.weight.dtype))  # [B, S, dim]
            out = mo if out is None else out + mo.to(out.dtype)
        if self.beat_proj is not None and beat is not None:
            feats = rhythm.beat_features(beat.to(self.beat_proj.weight.device), num_steps, start)  # [B, S, F]
            if drop_beat is not None:
                feats = feats * (~drop_beat.to(feats.device)).float()[:, None, None]
            b = self.beat_proj(feats.to(self.beat_proj.weight.dtype))  # [B, S, dim]
            out = b if out is None else out + b.to(out.dtype)
        return out

    def _null_part(self, part: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor, null: torch.Tensor):
        """Replace dropped samples' slots by [null, masked, masked, ...].

        No shortcut when nothing is dropped: ``bool(drop.any())`` would stall a GPU stream every forward (a
        device -> host sync), and the two ``where`` cost less than that."""
        null_part = torch.zeros_like(part)
        null_part[:, 0] = null.to(part.dtype)
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        d = drop[:, None]
        return torch.where(d[..., None], null_part, part), torch.where(d, null_mask, mask)

    def forward(
        self,
        video: tp.Optional[torch.Tensor],
        tags: tp.Optional[torch.Tensor] = None,
        tag_mask: tp.Optional[torch.Tensor] = None,
        drop_video: tp.Optional[torch.Tensor] = None,
        drop_tags: tp.Optional[torch.Tensor] = None,
        batch_size: tp.Optional[int] = None,
    ) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """video [B,Tv,Cv] or None (= dropped), tags [B,Nt,Ct] or None, masks/drops [B] bool -> cond [B,L,dim], mask [B,L]."""
        B = batch_size or (video.shape[0] if video is not None else tags.shape[0])
        device = self.null_video.device
        parts, masks = [], []

        if video is None:  # a fully unconditional (or tags-only) request: one null slot
            v = self.null_video.expand(B, 1, self.dim)
            vm = torch.ones(B, 1, dtype=torch.bool, device=device)
        else:
            v = self.video_proj(video)  # [B, Tv, dim]
            if self.video_positions:
                v = v + sin_embedding(self.video_token_positions(v.shape[1], v.device), self.dim).to(v.dtype)
            vm = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
            if drop_video is not None:
                v, vm = self._null_part(v, vm, drop_video.to(v.device), self.null_video)
        parts.append(v)
        masks.append(vm)

        if self.tag_dim:
            if tags is None or tags.shape[1] == 0:
                t = self.null_tags.expand(B, 1, self.dim).to(v.dtype)
                tm = torch.ones(B, 1, dtype=torch.bool, device=device)
            else:
                t = self.tag_proj(tags.to(v.dtype))  # [B, Nt, dim]
                tm = tag_mask.bool() if tag_mask is not None else torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
                empty = ~tm.any(dim=1)  # samples without any tag use the null tag token
                drop = empty if drop_tags is None else (drop_tags.to(t.device) | empty)
                t, tm = self._null_part(t, tm, drop, self.null_tags)
            parts.append(t)
            masks.append(tm)
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)
