"""MusicGen's "delay" codebook interleaving pattern (SPEC §2).

EnCodec gives K parallel token streams per frame. MusicGen predicts all K codebooks of one step at once, but shifts
codebook k right by k steps so that codebook k of frame t is predicted after codebooks < k of the same frame were
already seen. With T frames the pattern sequence has S = T + K - 1 steps; codebook k at step s holds frame s - k,
and the positions where s - k falls outside [0, T) hold the special token (id = card, the extra embedding row).

Example, K = 3, T = 2, frames a, b (``_`` = special)::

    k=0:  a0 b0 _  _
    k=1:  _  a1 b1 _        <- exactly audiocraft's DelayedPatternProvider (minus its always-empty first step,
    k=2:  _  _  a2 b2          which :class:`vmas.models.lm.MusicLM` adds itself as the start token)
"""
from __future__ import annotations

import typing as tp

import torch


class DelayPattern:
    """Build and revert the delay pattern.

    Args:
        n_q (int): number of codebooks K.
    """

    def __init__(self, n_q: int):
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        self.n_q = n_q

    @property
    def max_delay(self) -> int:
        return self.n_q - 1

    def num_steps(self, num_frames: int) -> int:
        """Pattern length S for T frames."""
        return num_frames + self.max_delay

    def num_frames(self, num_steps: int) -> int:
        """Frames T covered by a pattern of S steps."""
        return num_steps - self.max_delay

    def valid_mask(self, num_frames: int, device: tp.Optional[torch.device] = None) -> torch.Tensor:
        """[K, S] bool: True where codebook k at step s holds a real frame (0 <= s - k < T)."""
        s = torch.arange(self.num_steps(num_frames), device=device)  # [S]
        k = torch.arange(self.n_q, device=device)[:, None]  # [K, 1]
        t = s[None, :] - k  # [K, S] frame index held at (k, s)
        return (t >= 0) & (t < num_frames)

    def build(self, codes: torch.Tensor, special: int) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """codes [B, K, T] -> (seq [B, K, T+K-1] with ``special`` where not valid, valid [K, T+K-1] bool)."""
        B, K, T = codes.shape
        assert K == self.n_q, f"expected {self.n_q} codebooks, got {K}"
        seq = codes.new_full((B, K, self.num_steps(T)), special)  # [B, K, S]
        for k in range(K):
            seq[:, k, k: k + T] = codes[:, k]
        return seq, self.valid_mask(T, device=codes.device)

    def revert(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, K, S] -> codes [B, K, S-K+1] (the inverse of :meth:`build`; works on logits [B, K, S, ...] too)."""
        B, K, S = seq.shape[:3]
        assert K == self.n_q, f"expected {self.n_q} codebooks, got {K}"
        T = self.num_frames(S)
        assert T >= 0, f"a pattern of {S} steps is shorter than the delay {self.max_delay}"
        return torch.stack([seq[:, k, k: k + T] for k in range(K)], dim=1)  # [B, K, T, ...]
