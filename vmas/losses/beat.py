"""Beat-weighted cross-entropy over the delay pattern (SPEC §5).

``L_ar = Σ W[t]·CE / Σ W[t]`` over the valid pattern positions, where codebook k at pattern step s predicts code
frame ``t = s - k`` and therefore takes that frame's weight. With all weights 1 (λ = 1) this is exactly the plain
MusicGen objective: the mean cross-entropy over every valid (codebook, step) position.
"""
from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F


def frame_weights_to_pattern(weights: torch.Tensor, n_q: int, num_steps: int) -> torch.Tensor:
    """Per-frame weights [B, T] -> per-position weights [B, K, S]: position (k, s) gets ``weights[:, s-k]``.

    Positions whose frame falls outside ``[0, T)`` (the delay pattern's leading/trailing pads) get 0.
    """
    B, T = weights.shape
    frame = torch.arange(num_steps, device=weights.device)[None, :] - torch.arange(n_q, device=weights.device)[:, None]
    inside = (frame >= 0) & (frame < T)  # [K, S]
    w = weights[:, frame.clamp(0, T - 1)]  # [B, K, S]
    return w * inside.to(w.dtype)


def beat_weighted_ce(logits: torch.Tensor, seq_targets: torch.Tensor, valid: torch.Tensor,
                     weights: tp.Optional[torch.Tensor] = None,
                     special_token: tp.Optional[int] = None,
                     global_normalizer: bool = False) -> tp.Tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy of the LM's pattern logits.

    Args:
        logits: float [B, K, S, card], LM output over the delay pattern.
        seq_targets: long [B, K, S], the pattern sequence the LM was fed (target at step s is the code at step s;
            the LM is causal so position s was predicted from steps < s).
        valid: bool [K, S], pattern positions that hold a real code.
        weights: float [B, T] per code frame (``beat_weights`` from the batch), or None for all ones.
        special_token: id of the pattern's empty token (``card``); positions holding it are excluded too
            (default: ``card``, i.e. ``logits.shape[-1]``).
        global_normalizer: under data parallelism, divide by the mean over ranks of ``Σ W`` instead of this
            rank's own, so that the ranks' average (what gradient averaging optimises) is exactly the global
            batch's ``Σ W·CE / Σ W`` even when ranks hold different total weight.

    Returns:
        ``(loss, per_codebook)``: scalar ``Σ W·CE / Σ W`` over all kept positions, and float [K] with the same
        ratio per codebook (for logging ``ce_q1``...; a codebook with no weight reports 0).
    """
    B, K, S, card = logits.shape
    assert seq_targets.shape == (B, K, S), f"targets {tuple(seq_targets.shape)} != logits {(B, K, S)}"
    assert valid.shape == (K, S), f"valid {tuple(valid.shape)} != {(K, S)}"
    special = card if special_token is None else special_token
    if weights is None:
        w = torch.ones((B, K, S), device=logits.device)  # [B, K, S]
    else:
        assert weights.ndim == 2 and weights.shape[0] == B, f"weights must be [B, T], got {tuple(weights.shape)}"
        assert weights.shape[1] == S - K + 1, f"weights cover {weights.shape[1]} frames, the pattern {S - K + 1}"
        w = frame_weights_to_pattern(weights.to(logits.device), K, S)  # [B, K, S]
    keep = valid[None].to(logits.device) & (seq_targets != special) & (seq_targets >= 0) & (seq_targets < card)
    targets = torch.where(keep, seq_targets, torch.zeros_like(seq_targets))  # any in-range id; masked below
    # bf16/fp16 logits: the log-softmax runs in float32 (a 2048-way softmax loses digits in bf16).
    compute_dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
    ce = F.cross_entropy(logits.reshape(B * K * S, card).to(compute_dtype), targets.reshape(-1),
                         reduction="none").view(B, K, S)  # [B, K, S]
    w = torch.where(keep, w.to(compute_dtype), torch.zeros((), dtype=compute_dtype, device=w.device))
    num_k = (w * ce).sum(dim=(0, 2))  # [K]
    den_k = w.sum(dim=(0, 2))  # [K]
    per_codebook = torch.where(den_k > 0, num_k / den_k.clamp_min(1e-12), torch.zeros_like(num_k))
    den = den_k.sum()
    if global_normalizer and torch.distributed.is_available() and torch.distributed.is_initialized():
        den = den.detach().clone()  # weights are data: the normaliser carries no gradient
        torch.distributed.all_reduce(den)
        den = den / torch.distributed.get_world_size()
    loss = num_k.sum() / den.clamp_min(1e-12)  # 0 (with a graph) when nothing is kept
    return loss, per_codebook.detach()
