"""Streaming pre-norm transformer decoder: causal self-attention -> cross-attention -> FFN (MusicGen, SPEC §4).

Parameter names follow audiocraft's ``StreamingTransformerLayer`` (``self_attn.in_proj_weight``, ``norm_cross``,
``linear1`` ...) so a MusicGen ``state_dict.bin`` maps onto it almost 1:1 (see :mod:`vmas.models.lm`).

One code path serves training and decoding. ``forward`` takes an optional key/value cache: a preallocated
``[2, B, H, S_max, Dh]`` tensor per layer that the new keys/values are written into at ``offset``, so a
step costs no allocation beyond its activations. Generation on small models is bound by per-op overhead, not
arithmetic, which is why q/k/v are one fused matmul, cross-attention keys/values are computed once per sequence
(:meth:`TransformerLayer.cross_kv`), and attention is PyTorch's fused ``scaled_dot_product_attention``.
"""
from __future__ import annotations

import math
import typing as tp

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CrossKV = tp.Tuple[torch.Tensor, torch.Tensor]  # keys, values: [B, H, L, Dh] each


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """positions [...] -> [..., dim]: MusicGen's sinusoidal table (cos half then sin half, period up to max_period).

    Matches audiocraft's ``create_sin_embedding`` and transformers' ``MusicgenSinusoidalPositionalEmbedding``:
    frequency i is ``max_period ** (-i / (half - 1))``.
    """
    half = dim // 2
    freqs = torch.arange(half, device=positions.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * freqs / max(half - 1, 1))  # [half]
    phase = positions.to(torch.float32)[..., None] * freqs  # [..., half]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """key mask [B, L] bool (True = attend) -> [B, 1, 1, L] additive float mask for SDPA.

    A finite minimum (not -inf) keeps a fully masked row finite instead of NaN.
    """
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[:, None, None, :]


def _one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh) + mask) v for one query per row: q [N, H, 1, Dh], k/v [N, H, S, Dh], additive mask
    [N or 1, 1, 1, S] -> [N, H, 1, Dh].

    SDPA's math written as broadcasts and reductions, for the compiled static step: inductor fuses it into
    vectorised loops over the window, where it would call SDPA's CPU flash kernel (tuned for many queries) as an
    opaque fallback: 88 vs 110 us a call inside a compiled graph at d 256, 503 keys, 2 x 8 heads (2026-12-07).
    """
    scores = (q * k).sum(dim=-1, dtype=torch.float32) * q.shape[-1] ** -0.5 + mask[:, :, 0]  # [N, H, S]
    probs = scores.softmax(dim=-1).to(v.dtype)  # [N, H, S]
    return (probs[..., None] * v).sum(dim=2, keepdim=True)  # [N, H, 1, Dh]


class MultiheadAttention(nn.Module):
    """Bias-free multi-head attention with audiocraft's fused ``in_proj_weight`` ([q; k; v] rows, [3*dim, dim]).

    Args:
        dim (int): model width.
        num_heads (int): heads; ``dim`` must divide evenly.
        dropout (float): attention-probability dropout in training.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} is not divisible by num_heads {num_heads}"
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """[B, T, n*dim] -> [n, B, H, T, Dh] (a view + permute; no copy)."""
        B, T, _ = x.shape
        return x.view(B, T, n, self.num_heads, self.dim // self.num_heads).permute(2, 0, 3, 1, 4)

    def project_kv(self, memory: torch.Tensor) -> CrossKV:
        """memory [B, L, dim] -> keys, values [B, H, L, Dh] (cross-attention: computed once per sequence)."""
        k, v = self._heads(F.linear(memory, self.in_proj_weight[self.dim:]), 2).unbind(0)
        return k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: tp.Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)  # [B,H,T,Dh]
        B, H, T, Dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * Dh))  # [B, T, dim]

    def self_attend(self, x: torch.Tensor, cache: tp.Optional[torch.Tensor] = None, offset: int = 0) -> torch.Tensor:
        """Causal self-attention. x [B, T, dim]; ``cache`` [2, B, H, S_max, Dh] receives k/v at [offset, offset+T)."""
        T = x.shape[1]
        q, k, v = self._heads(F.linear(x, self.in_proj_weight), 3).unbind(0)  # [B, H, T, Dh] each
        if cache is not None:
            end = offset + T
            cache[0, :, :, offset:end] = k
            cache[1, :, :, offset:end] = v
            k, v = cache[0, :, :, :end], cache[1, :, :, :end]  # [B, H, end, Dh]
        if T == 1:  # one new query sees every cached key: no mask at all
            return self._attend(q, k, v)
        if offset == 0 or cache is None:
            return self._attend(q, k, v, is_causal=True)
        # a chunk after a cached prefix: query i (absolute offset+i) sees keys 0..offset+i
        allowed = torch.ones(T, offset + T, dtype=torch.bool, device=x.device).tril(diagonal=offset)
        return self._attend(q, k, v, mask=allowed)

    def cross_attend(self, x: torch.Tensor, kv: CrossKV, mask: tp.Optional[torch.Tensor]) -> torch.Tensor:
        """x [B, T, dim] attends to precomputed ``kv`` ([B, H, L, Dh]) under additive ``mask`` [B, 1, 1, L]."""
        q = self._heads(F.linear(x, self.in_proj_weight[: self.dim]), 1)[0]  # [B, H, T, Dh]
        return self._attend(q, kv[0], kv[1], mask=mask)


class TransformerLayer(nn.Module):
    """Pre-norm decoder layer: ``x += SA(norm1 x); x += CA(norm_cross x, cond); x += FFN(norm2 x)``.

    Args:
        dim (int): model width.
        num_heads (int): attention heads (self and cross).
        ffn_dim (int): hidden width of the GELU feed-forward (no biases, as MusicGen).
        dropout (float): dropout on attention probabilities and on each residual branch, training only.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiheadAttention(dim, num_heads, dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attention = MultiheadAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim, bias=False)
        self.linear2 = nn.Linear(ffn_dim, dim, bias=False)
        self.dropout = dropout

    def cross_kv(self, cond: torch.Tensor) -> CrossKV:
        return self.cross_attention.project_kv(cond)

    def forward(self, x: torch.Tensor, cross_kv: CrossKV, cross_mask: tp.Optional[torch.Tensor],
                cache: tp.Optional[torch.Tensor] = None, offset: int = 0) -> torch.Tensor:
        """x [B, T, dim] -> [B, T, dim]."""
        x = x + self._drop(self.self_attn.self_attend(self.norm1(x), cache, offset))
        x = x + self._drop(self.cross_attention.cross_attend(self.norm_cross(x), cross_kv, cross_mask))
        return x + self._drop(self.linear2(F.gelu(self.linear1(self.norm2(x)))))

    def step(self, x: torch.Tensor, cache: torch.Tensor, t: int, cross_kv: CrossKV,
             cross_mask: tp.Optional[torch.Tensor]) -> torch.Tensor:
        """Decode one position: x [N, dim] at step ``t``, cache [2, N, H, S_max, Dh] -> [N, dim]. Inference only.

        The same math as :meth:`forward` with a single query (tested equal), in fewer operations: rows stay 2-D so
        q/k/v come out of one matmul as views without transposes, k and v enter the cache in one copy, and each
        residual add is fused into its projection with ``addmm``.
        """
        N, D = x.shape
        qkv = self._step_qkv(x)  # [N, 3, H, 1, Dh]
        cache[:, :, :, t: t + 1] = qkv[:, 1:].transpose(0, 1)  # k, v -> [2, N, H, 1, Dh]
        a = F.scaled_dot_product_attention(qkv[:, 0], cache[0, :, :, : t + 1], cache[1, :, :, : t + 1])  # [N,H,1,Dh]
        return self._step_rest(x, a, cross_kv, cross_mask)

    def static_step(self, x: torch.Tensor, cache: torch.Tensor, t: torch.Tensor, window_mask: torch.Tensor,
                    cross_kv: CrossKV, cross_mask: tp.Optional[torch.Tensor]) -> torch.Tensor:
        """:meth:`step` with shapes that never change: x [N, dim] at step ``t`` (long tensor [1], on the model's
        device), cache [2, N, H, S_max, Dh] -> [N, dim]. Inference only.

        The query attends to the *whole* preallocated window under ``window_mask`` ([1, 1, 1, S_max] additive: 0 on
        keys 0..t, the dtype's minimum after t, so those keys get weight exactly 0), and k/v are written at ``t``
        with ``index_copy_``, so neither a shape nor a Python value depends on the step: ``torch.compile`` builds
        one graph for every step and a CUDA graph can replay it. Same math as :meth:`step` (tested to 1e-5).
        """
        qkv = self._step_qkv(x)  # [N, 3, H, 1, Dh]
        cache.index_copy_(3, t, qkv[:, 1:].transpose(0, 1).to(cache.dtype))  # k, v -> cache[:, :, :, t] (autocast)
        if torch.compiler.is_compiling():
            a = _one_query_attention(qkv[:, 0], cache[0], cache[1], window_mask)  # [N, H, 1, Dh]
        else:
            a = F.scaled_dot_product_attention(qkv[:, 0], cache[0], cache[1], attn_mask=window_mask)  # [N, H, 1, Dh]
        return self._step_rest(x, a, cross_kv, cross_mask)

    def _step_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, dim] -> q, k, v of one position as [N, 3, H, 1, Dh] (views of one matmul)."""
        N, D = x.shape
        h = F.layer_norm(x, (D,), self.norm1.weight, self.norm1.bias, self.norm1.eps)
        H = self.self_attn.num_heads
        return torch.mm(h, self.self_attn.in_proj_weight.t()).view(N, 3, H, 1, D // H)

    def _step_rest(self, x: torch.Tensor, a: torch.Tensor, cross_kv: CrossKV,
                   cross_mask: tp.Optional[torch.Tensor]) -> torch.Tensor:
        """The rest of a one-position step after self-attention ``a`` [N, H, 1, Dh]: output projection and residual,
        cross-attention, FFN -> [N, dim]."""
        N, D = x.shape
        H = self.self_attn.num_heads
        ln = F.layer_norm
        x = torch.addmm(x, a.view(N, D), self.self_attn.out_proj.weight.t())
        h = ln(x, (D,), self.norm_cross.weight, self.norm_cross.bias, self.norm_cross.eps)
        q = torch.mm(h, self.cross_attention.in_proj_weight[:D].t()).view(N, H, 1, D // H)
        if torch.compiler.is_compiling() and cross_mask is not None:  # the compiled static step (see there)
            a = _one_query_attention(q, cross_kv[0], cross_kv[1], cross_mask)  # [N, H, 1, Dh]
        else:
            a = F.scaled_dot_product_attention(q, cross_kv[0], cross_kv[1], attn_mask=cross_mask)  # [N, H, 1, Dh]
        x = torch.addmm(x, a.view(N, D), self.cross_attention.out_proj.weight.t())
        h = ln(x, (D,), self.norm2.weight, self.norm2.bias, self.norm2.eps)
        return torch.addmm(x, F.gelu(torch.mm(h, self.linear1.weight.t())), self.linear2.weight.t())

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # a plain branch instead of an nn.Dropout call: at decode time this runs 3x per layer per step
        return F.dropout(x, self.dropout, training=True) if self.training and self.dropout > 0 else x


class StreamingTransformer(nn.Module):
    """A stack of :class:`TransformerLayer` with optional activation checkpointing.

    Args:
        dim, num_heads, ffn_dim, dropout: see :class:`TransformerLayer`.
        num_layers (int): depth.
        grad_checkpointing (bool): recompute each layer in backward (training memory; paper preset).
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float = 0.0,
                 grad_checkpointing: bool = False):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.grad_checkpointing = grad_checkpointing
        self.layers = nn.ModuleList(TransformerLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))

    def cross_kv(self, cond: torch.Tensor) -> tp.List[CrossKV]:
        """cond [B, L, dim] -> per-layer cross-attention keys/values."""
        return [layer.cross_kv(cond) for layer in self.layers]

    def new_cache(self, batch: int, max_steps: int, device: torch.device,
                  dtype: torch.dtype) -> tp.List[torch.Tensor]:
        """Preallocated self-attention cache: per layer one [2, B, H, max_steps, Dh] tensor (keys, values).

        One tensor per layer rather than a view of one big tensor: a compiled step that writes into a view of a
        graph input gets the whole base copied back every step (functionalisation), while a write into an input
        itself is done in place.
        """
        H = self.num_heads
        return [torch.zeros(2, batch, H, max_steps, self.dim // H, device=device, dtype=dtype) for _ in self.layers]

    def step(self, x: torch.Tensor, cross_kv: tp.List[CrossKV], cross_mask: tp.Optional[torch.Tensor],
             cache: tp.List[torch.Tensor], t: int) -> torch.Tensor:
        """One decoding position: x [N, dim] at step ``t`` -> [N, dim] (see :meth:`TransformerLayer.step`)."""
        for i, layer in enumerate(self.layers):
            x = layer.step(x, cache[i], t, cross_kv[i], cross_mask)
        return x

    def static_step(self, x: torch.Tensor, cross_kv: tp.List[CrossKV], cross_mask: tp.Optional[torch.Tensor],
                    cache: tp.List[torch.Tensor], t: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
        """One decoding position with fixed shapes (see :meth:`TransformerLayer.static_step`): x [N, dim], ``t``
        long [1], ``window_mask`` [1, 1, 1, S_max] -> [N, dim]."""
        for i, layer in enumerate(self.layers):
            x = layer.static_step(x, cache[i], t, window_mask, cross_kv[i], cross_mask)
        return x

    def forward(self, x: torch.Tensor, cross_kv: tp.List[CrossKV], cross_mask: tp.Optional[torch.Tensor],
                cache: tp.Optional[tp.List[torch.Tensor]] = None, offset: int = 0) -> torch.Tensor:
        """x [B, T, dim]; cache from :meth:`new_cache` (streaming) or None (whole sequence) -> [B, T, dim]."""
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache[i]
            if ckpt:
                x = checkpoint(layer, x, cross_kv[i], cross_mask, use_reentrant=False)
            else:
                x = layer(x, cross_kv[i], cross_mask, layer_cache, offset)
        return x
