"""Token-layout helpers for :mod:`vmas.models.hiera` (the tricky reshapes live here, tested in isolation).

Hiera never gathers or scatters tokens. Instead it *unrolls* the token grid once, right after the patch embed, so
that every later operation is a plain reshape:

- Q-pooling with stride ``s`` becomes ``max`` over the outermost ``prod(s)`` chunks of the sequence;
- mask-unit (windowed) attention becomes "split the sequence into ``L`` outer x ``W`` inner positions".

Unrolling by a schedule of strides ``[s1, s2, s3]`` writes each grid coordinate as
``h = ((h3 * s3 + r3) * s2 + r2) * s1 + r1`` and orders the sequence as ``[r1, r2, r3, t3, h3, w3]`` (outermost
first, each ``r`` over its (t, h, w) stride box). Consequently:

- the ``prod(s1)`` outermost chunks are exactly the stride-``s1`` pooling groups (``q_pool``);
- splitting the sequence as ``(l w)`` with ``l = r1 .. rm`` gives windows that are real spatio-temporal boxes of
  size ``s1 * ... * sm`` (per axis). A mask unit that is not such a prefix product (e.g. ``(1, 8, 8)`` with strides
  ``(1,4,4), (1,7,7)``) would produce windows that are scattered, non-contiguous token sets; we reject it.

``reroll`` undoes the unroll for the strides not yet consumed by pooling, giving ``[B, T, H, W, C]`` features.
"""
from __future__ import annotations

import math
import typing as tp

import torch
from einops import rearrange, reduce

Size3 = tp.Sequence[int]


def unroll(x: torch.Tensor, size: Size3, schedule: tp.Sequence[Size3]) -> torch.Tensor:
    """Reorder raster tokens so that stride groups are outermost.

    Args:
        x: ``[B, N, C]`` tokens in raster (t, h, w) order, ``N = prod(size)``.
        size: token grid ``(T, H, W)``; each axis must be divisible by the product of the schedule's strides.
        schedule: the pooling strides in the order they will be consumed.
    Returns:
        ``[B, N, C]`` in the order ``[r1, r2, ..., t_last, h_last, w_last]``.
    """
    B, N, C = x.shape
    assert N == math.prod(size), f"{N} tokens for grid {tuple(size)}"
    x = x.reshape(B, *size, C)  # [B, T, H, W, C]
    for st, sh, sw in schedule:
        # move this stride box into the batch axis, after the boxes moved before it
        x = rearrange(x, "b (t st) (h sh) (w sw) c -> (b st sh sw) t h w c", st=st, sh=sh, sw=sw)
    return x.reshape(B, N, C)


def reroll(x: torch.Tensor, size: Size3, schedule: tp.Sequence[Size3]) -> torch.Tensor:
    """Inverse of :func:`unroll` for the strides that are still unrolled.

    Args:
        x: ``[B, N, C]`` unrolled by ``schedule`` from a grid of ``size``.
        size: the current token grid ``(T, H, W)`` (after the poolings already applied).
        schedule: the strides not consumed yet (the tail of the original schedule).
    Returns:
        ``[B, T, H, W, C]`` in raster order.
    """
    B, N, C = x.shape
    inner = [n // math.prod(s[i] for s in schedule) for i, n in enumerate(size)]  # grid after the full unroll
    x = x.reshape(-1, *inner, C)  # [B * prod(strides), t, h, w, C]
    for st, sh, sw in reversed(schedule):
        # the most recently unrolled box is the innermost part of the batch axis: undo it first
        x = rearrange(x, "(b st sh sw) t h w c -> b (t st) (h sh) (w sw) c", st=st, sh=sh, sw=sw)
    return x.reshape(B, *size, C)


def q_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool unrolled tokens by a flattened stride: ``[B, (s N'), C] -> [B, N', C]``."""
    return reduce(x, "b (s n) c -> b n c", "max", s=stride)


def split_windows(x: torch.Tensor, num_windows: int) -> torch.Tensor:
    """``[B, (L W), C] -> [B, W, L, C]``: the window index is the innermost part of the unrolled order."""
    return rearrange(x, "b (l w) c -> b w l c", w=num_windows)


def merge_windows(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_windows`: ``[B, W, L, C] -> [B, (L W), C]``."""
    return rearrange(x, "b w l c -> b (l w) c")


def prefix_products(schedule: tp.Sequence[Size3]) -> tp.List[tp.Tuple[int, int, int]]:
    """Per-axis products of the first ``m`` strides, ``m = 0 .. len(schedule)``: the valid mask units."""
    out = [(1, 1, 1)]
    for s in schedule:
        out.append(tuple(a * b for a, b in zip(out[-1], s)))
    return out


def window_plan(
    mask_unit_size: Size3, schedule: tp.Sequence[Size3]
) -> tp.Optional[tp.List[tp.Optional[tp.Tuple[int, int, int]]]]:
    """Mask-unit size (per axis, in tokens of that stage) at each stage, or ``None`` where windows no longer exist.

    Stage ``k`` (0-based) sees the grid after ``k`` poolings. A pooling stride that does not divide the current
    window (it "exceeds" the window) ends windowing: that block and all later ones attend globally.
    Returns None when ``mask_unit_size`` is not a prefix product of ``schedule`` (windows would not be boxes).
    """
    mu = tuple(int(m) for m in mask_unit_size)
    if mu not in prefix_products(schedule):
        return None
    plan: tp.List[tp.Optional[tp.Tuple[int, int, int]]] = [mu]
    for s in schedule:
        cur = plan[-1]
        if cur is None or any(c % st for c, st in zip(cur, s)):
            plan.append(None)
        else:
            plan.append(tuple(c // st for c, st in zip(cur, s)))
    return plan
