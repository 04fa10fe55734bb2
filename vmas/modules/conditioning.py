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

import math
import typing as tp

import torch
from torch import nn


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[..., T] positions -> [..., T, dim] (cos | sin halves, MusicGen's convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    args = positions.to(torch.float32)[..., None] * freqs  # [..., T, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ConditionFuser(nn.Module):
    """Project video / tag embeddings to the LM width and apply CFG dropout with learned null tokens.

    Args:
        video_dim (int): width of the video encoder tokens (768 for Hiera-B).
        dim (int): LM width.
        tag_dim (int): width of tag text embeddings (512 for CLAP); 0 disables the tag branch.
        video_positions (bool): add sinusoidal time positions to the projected video tokens, so cross-attention
            can tell *when* a visual event happens (the LM's keys are otherwise an unordered set).
    """

    def __init__(self, video_dim: int, dim: int, tag_dim: int = 0, video_positions: bool = True):
        super().__init__()
        self.dim = dim
        self.tag_dim = tag_dim
        self.video_positions = video_positions
        self.video_proj = nn.Linear(video_dim, dim)
        self.null_video = nn.Parameter(torch.randn(dim) * 0.02)
        if tag_dim:
            self.tag_proj = nn.Linear(tag_dim, dim)
            self.null_tags = nn.Parameter(torch.randn(dim) * 0.02)

    def _null_part(self, part: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor, null: torch.Tensor):
        """Replace dropped samples' slots by [null, masked, masked, ...]."""
        if not bool(drop.any()):
            return part, mask
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
                pos = torch.arange(v.shape[1], device=v.device)
                v = v + sinusoidal_embedding(pos, self.dim).to(v.dtype)
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
