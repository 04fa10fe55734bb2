"""MusicGen-style language model over delayed EnCodec tokens, with KV-cached sampling and CFG (SPEC §4).

Input: the delay-pattern sequence ``seq [B, K, S]`` (:class:`vmas.modules.patterns.DelayPattern`). The model shifts it
right by one step itself, with the special token (id = card) as the start column, exactly audiocraft's "empty first
step", so ``logits[:, k, s]`` predicts ``seq[:, k, s]`` from ``seq[:, :, :s]`` and the loss compares logits with
``seq`` directly. Condition tokens ``cond [B, L, dim]`` (video / tag tokens already projected to ``dim`` by
:class:`vmas.modules.conditioning.ConditionFuser`) are the cross-attention keys/values.

Pretrained MusicGen weights (audiocraft ``state_dict.bin`` or transformers ``MusicgenForCausalLM`` /
``MusicgenForConditionalGeneration``) go through one key mapping, :func:`musicgen_to_vmas_state_dict`. MusicGen's
text-condition projection (T5 -> dim) is dropped: our fuser's video/tag projections take its place.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import typing as tp
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vmas.errors import CheckpointError
from vmas.modules.patterns import DelayPattern
from vmas.modules.transformer import CrossKV, StreamingTransformer, additive_mask, sin_embedding
from vmas.sampling import DECODERS

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------- sampling
Generators = tp.Union[torch.Generator, tp.Sequence[torch.Generator], None]
"""One generator for the whole batch, or one per batch row (per-video streams: a video's samples then do not
depend on what it is batched with, ``vmas generate --batch-size``)."""


def _exponential(shape: tp.Sequence[int], device: torch.device, generator: Generators):
    """Exp(1) noise drawn on the generator's device (so a CPU generator also drives a CUDA model), then moved.

    A list of generators draws row ``b`` of ``shape[0]`` from ``generator[b]``: ``shape[1:]`` numbers each, the
    same numbers a single generator draws for a batch of one.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([_exponential(shape[1:], device, g) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.empty(shape, device=gen_device).exponential_(generator=generator).to(device)


def noise_width(card: int, top_k: int, top_p: float) -> int:
    """Last dimension of the Exp(1) noise one sampling call draws: top_k under top-k, else the whole vocabulary."""
    return top_k if (top_p <= 0 and 0 < top_k < card) else card


def sample_with_noise(logits: torch.Tensor, noise: tp.Optional[torch.Tensor], top_k: int = 250, top_p: float = 0.0,
                      temperature: float = 1.0) -> torch.Tensor:
    """logits [..., card], noise [..., :func:`noise_width`] Exp(1) (None when greedy) -> token ids [...].

    The arithmetic of :func:`sample_tokens` with the noise given: no generator, no data-dependent Python branch,
    so the static decode step runs it inside ``torch.compile`` / a CUDA graph and draws the same tokens as
    :func:`sample_tokens` from the same numbers. The branches here depend on the sampling settings only.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_p > 0:
        probs, idx = logits.softmax(dim=-1).sort(dim=-1, descending=True)  # [..., card]
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        probs = probs.masked_fill(before > top_p, 0.0)
    elif 0 < top_k < logits.shape[-1]:
        vals, idx = logits.topk(top_k, dim=-1)  # [..., k]
        probs = vals.softmax(dim=-1)
    else:
        probs, idx = logits.softmax(dim=-1), None
    choice = (probs / noise).argmax(dim=-1, keepdim=True)
    return (choice if idx is None else idx.gather(-1, choice)).squeeze(-1)


def sample_tokens(logits: torch.Tensor, top_k: int = 250, top_p: float = 0.0, temperature: float = 1.0,
                  generator: Generators = None) -> torch.Tensor:
    """logits [..., card] -> token ids [...].

    top_p > 0: nucleus sampling (top_k ignored, as audiocraft); else top_k > 0: the k most likely tokens; else the
    full distribution. temperature <= 0 is greedy (argmax). Sampling uses the exponential race
    ``argmax(p_i / E_i), E_i ~ Exp(1)``, which draws token i with probability p_i and needs one noise tensor of a
    fixed shape per call, so a seeded generator gives the same stream whatever device runs the model.
    """
    noise = _draw_noise(logits.shape, top_k, top_p, temperature, logits.device, generator)
    return sample_with_noise(logits, noise, top_k, top_p, temperature)


def _draw_noise(logits_shape: tp.Sequence[int], top_k: int, top_p: float, temperature: float, device: torch.device,
                generator: Generators) -> tp.Optional[torch.Tensor]:
    """The Exp(1) noise of one :func:`sample_tokens` call on logits of ``logits_shape`` (None when greedy): every
    decoder draws through here, so all of them consume the generator's stream identically."""
    if temperature <= 0:
        return None
    width = noise_width(logits_shape[-1], top_k, top_p)
    return _exponential((*logits_shape[:-1], width), device, generator)


def _generator_device(generator: Generators) -> tp.Optional[torch.device]:
    if isinstance(generator, (list, tuple)):
        return generator[0].device if generator else None
    return None if generator is None else generator.device


def _step_noise(logits_shape: tp.Sequence[int], n: int, top_k: int, top_p: float, temperature: float,
                device: torch.device, generator: Generators,
                at_once: tp.Optional[bool] = None) -> tp.Iterator[tp.Optional[torch.Tensor]]:
    """The noise of ``n`` successive sampling steps, in order (the numbers ``n`` :func:`sample_tokens` calls draw).

    A generator on another device than the model (a CPU generator driving a CUDA model, which keeps seeded runs
    equal across devices; or cuda:1 driving cuda:0) draws all ``n`` at once and sends them in one copy: a host->device copy per step
    would block the host every step. Otherwise each step draws its own (no memory held for later steps).
    ``at_once`` forces either way (tests: the same numbers).
    """
    gen_device = _generator_device(generator)
    if at_once is None:
        at_once = gen_device is not None and torch.device(gen_device) != torch.device(device)
    if temperature > 0 and n > 0 and at_once:
        gen_device = gen_device or device
        draws = [_draw_noise(logits_shape, top_k, top_p, temperature, gen_device, generator) for _ in range(n)]
        yield from torch.stack(draws).to(device).unbind(0)  # [n, B, K, W] -> n x [B, K, W]
        return
    for _ in range(n):
        yield _draw_noise(logits_shape, top_k, top_p, temperature, device, generator)


def _burn_noise(logits_shape: tp.Sequence[int], top_k: int, top_p: float, temperature: float, device: torch.device,
                generator: Generators) -> None:
    """Consume exactly the noise :func:`sample_tokens` would (prompt steps keep the rng stream aligned)."""
    _draw_noise(logits_shape, top_k, top_p, temperature, device, generator)


def _guide(h: torch.Tensor, cfg: float, extra_weights: tp.Sequence[float] = ()) -> torch.Tensor:
    """Rows [c; u; u_1; ...] of equal size -> ``c + (cfg - 1)(c - u) + Σ w_i (c - u_i)`` (= ``u + cfg (c - u)``)."""
    parts = h.chunk(2 + len(extra_weights), dim=0)
    c, u = parts[0], parts[1]
    out = torch.lerp(u, c, cfg)  # u + cfg * (c - u)
    for w, ui in zip(extra_weights, parts[2:]):
        out = out + w * (c - ui)
    return out


class GuidanceBranch(tp.NamedTuple):
    """One unconditional branch of classifier-free guidance, run in the same batch as the conditional one.

    ``weight`` w enters the guided hidden state as ``w (c - u)``. A NamedTuple so that it still unpacks like the
    ``(cond, mask, step_cond, weight)`` tuples callers passed before it had a name.
    """

    cond: torch.Tensor  # [B, L, dim] condition tokens of the branch
    mask: tp.Optional[torch.Tensor]  # [B, L] bool (True = attend); None = all
    step_cond: tp.Optional[torch.Tensor]  # [B, >=S, dim] per-step additive condition; None = zeros
    weight: float


# ----------------------------------------------------------------------------------------------------- the model
@dataclasses.dataclass
class LMState:
    """Decoding state held by :meth:`MusicLM.streaming`: caches plus weights fused once per sequence."""

    cache: tp.List[torch.Tensor]  # per layer [2, B, H, S_max, Dh] self-attention keys/values
    cross_kv: tp.List[CrossKV]  # per layer, [B, H, L, Dh] each
    cross_mask: torch.Tensor  # [B, 1, 1, L] additive
    positions: torch.Tensor  # [S_max, dim] sinusoidal table
    emb_table: torch.Tensor  # [K * (card+1), dim] the K input embeddings stacked
    emb_offsets: torch.Tensor  # [K] row offset of codebook k in emb_table
    head_t: torch.Tensor  # [dim, K * card] the K output heads stacked, transposed and contiguous
    step_cond: tp.Optional[torch.Tensor] = None  # [B, S_max, dim] per-step additive condition (or None)
    offset: int = 0  # steps already in the cache

    @property
    def max_steps(self) -> int:
        return self.cache[0].shape[3]


@dataclasses.dataclass
class StaticDecodeState:
    """Everything :meth:`MusicLM.static_step` reads or writes, in buffers whose shapes never change.

    The step reads input column ``t`` of ``inputs``, writes the sampled tokens into column ``t + 1`` where ``free``
    says so (elsewhere the delay pattern's special token or the prompt stays), and advances ``t``, all in place, so
    repeated calls (eager, compiled or replayed as a CUDA graph) run the whole decode without Python seeing a value.
    The Python fields are fixed for a generation call (``torch.compile`` specialises on them).
    """

    lm: LMState  # KV cache (per layer [2, N, H, S, Dh]), cross-attention K/V, stacked tables (N = n_branches * B)
    inputs: torch.Tensor  # [B, K, S + 1] long: column 0 = start (special), column s + 1 = pattern column s
    free: torch.Tensor  # [K, S + 1] bool: column s + 1 is sampled (valid in the pattern and after the prompt)
    t: torch.Tensor  # [1] long: the input column of the next step
    window: torch.Tensor  # [S] long: 0..S-1, key positions (the attention mask is ``window > t``)
    n_branches: int  # 1, or 2 + extra guidance branches (rows [c; u; u_1...] of the cache)
    cfg: float
    weights: tp.Tuple[float, ...]  # extra guidance branch weights (:func:`_guide`)
    top_k: int
    top_p: float
    temperature: float


class MusicLM(nn.Module):
    """MusicGen decoder: K summed input embeddings -> pre-norm transformer with cross-attention -> K linear heads.

    Args:
        dim (int): model width (MusicGen-medium 1536).
        num_layers (int): transformer layers (48).
        num_heads (int): attention heads (24).
        ffn_dim (int): FFN hidden width (6144).
        n_q (int): codebooks K (4).
        card (int): codebook size (2048); id ``card`` is the special (empty / start) token.
        dropout (float): training dropout.
        max_period (float): longest period of the sinusoidal positions.
        grad_checkpointing (bool): activation checkpointing per layer in training.
    """

    def __init__(self, dim: int = 1536, num_layers: int = 48, num_heads: int = 24, ffn_dim: int = 6144, n_q: int = 4,
                 card: int = 2048, dropout: float = 0.0, max_period: float = 10000.0, grad_checkpointing: bool = False):
        super().__init__()
        self.dim, self.n_q, self.card, self.max_period = dim, n_q, card, max_period
        self.pattern = DelayPattern(n_q)
        self.emb = nn.ModuleList(nn.Embedding(card + 1, dim) for _ in range(n_q))
        self.transformer = StreamingTransformer(dim, num_layers, num_heads, ffn_dim, dropout, grad_checkpointing)
        self.out_norm = nn.LayerNorm(dim)
        self.linears = nn.ModuleList(nn.Linear(dim, card, bias=False) for _ in range(n_q))
        self.dropout = nn.Dropout(dropout)
        self._init_weights()

    @property
    def special_token(self) -> int:
        return self.card

    def _init_weights(self) -> None:
        """Gaussian init with std 1/sqrt(fan_in), like audiocraft's ``gaussian`` LM init (meta tensors: a no-op)."""
        def init(weight: torch.Tensor, fan_in: int) -> None:
            std = fan_in ** -0.5
            nn.init.trunc_normal_(weight, std=std, a=-3 * std, b=3 * std)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                init(module.weight, module.in_features)
            elif isinstance(module, nn.Embedding):
                init(module.weight, self.dim)
            elif hasattr(module, "in_proj_weight"):
                init(module.in_proj_weight, self.dim)

    # ------------------------------------------------------------------------------------------------ training
    def shift_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, K, S] -> model inputs [B, K, S]: the start column (special token) then seq[..., :-1]."""
        start = seq.new_full((*seq.shape[:2], 1), self.special_token)
        return torch.cat([start, seq[..., :-1]], dim=-1)

    def embed(self, inputs: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """inputs [B, K, T] -> [B, T, dim]: sum of the K codebook embeddings + sinusoidal positions."""
        x = sum(self.emb[k](inputs[:, k]) for k in range(self.n_q))  # [B, T, dim]
        pos = torch.arange(offset, offset + inputs.shape[-1], device=inputs.device)
        return x + sin_embedding(pos, self.dim, self.max_period).to(x.dtype)

    def hidden(self, seq: torch.Tensor, cond: torch.Tensor, cond_mask: tp.Optional[torch.Tensor],
               step_cond: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """seq long [B, K, S], cond [B, L, dim], cond_mask [B, L] -> final normalised hidden states [B, S, dim].

        ``step_cond`` [B, >=S, dim] is added to the input of each step (a time-aligned condition, MusicGen's
        ``sum`` / ``input_interpolate`` fuse modes); cross-attention to ``cond`` is unchanged.
        """
        B, K, S = seq.shape
        assert K == self.n_q, f"expected {self.n_q} codebooks, got {K}"
        x = self.embed(self.shift_inputs(seq))  # [B, S, dim]
        if step_cond is not None:
            x = x + step_cond[:, :S].to(x.dtype)
        x = self.dropout(x)
        mask = None if cond_mask is None else additive_mask(cond_mask, x.dtype)  # [B, 1, 1, L]
        x = self.transformer(x, self.transformer.cross_kv(cond), mask)  # [B, S, dim]
        return self.out_norm(x)

    def forward(self, seq: torch.Tensor, cond: torch.Tensor, cond_mask: tp.Optional[torch.Tensor],
                step_cond: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """seq long [B, K, S] (delay pattern), cond [B, L, dim], cond_mask [B, L] bool (step_cond [B, S, dim]
        optional, see :meth:`hidden`) -> logits [B, K, S, card]."""
        x = self.hidden(seq, cond, cond_mask, step_cond)  # [B, S, dim]
        return torch.stack([head(x) for head in self.linears], dim=1)  # [B, K, S, card]

    # ----------------------------------------------------------------------------------------------- streaming
    @contextlib.contextmanager
    def streaming(self, cond: torch.Tensor, cond_mask: tp.Optional[torch.Tensor],
                  max_steps: int, step_cond: tp.Optional[torch.Tensor] = None) -> tp.Iterator[LMState]:
        """Context for step-by-step decoding of up to ``max_steps`` input columns against ``cond [B, L, dim]``.

        Everything that does not change per step is done here once: the KV cache is preallocated, cross-attention
        keys/values are projected, the K embeddings / heads are stacked into one table / one matrix, and the
        position table is built. Use inside ``torch.no_grad()``.
        """
        B = cond.shape[0]
        param = self.out_norm.weight
        if cond_mask is None:
            cond_mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
        state = LMState(
            cache=self.transformer.new_cache(B, max_steps, param.device, param.dtype),
            cross_kv=self.transformer.cross_kv(cond.to(param.dtype)),
            cross_mask=additive_mask(cond_mask, param.dtype),
            positions=sin_embedding(torch.arange(max_steps, device=param.device), self.dim,
                                    self.max_period).to(param.dtype),
            emb_table=torch.cat([e.weight for e in self.emb], dim=0),
            emb_offsets=torch.arange(self.n_q, device=param.device) * (self.card + 1),
            # one contiguous [dim, K*card] matrix: on CPU this is 2x faster than a transposed view and 4 Linears
            head_t=torch.cat([h.weight for h in self.linears], dim=0).t().contiguous(),
            step_cond=None if step_cond is None else step_cond.to(param.dtype),
        )
        try:
            yield state
        finally:
            state.cache = state.emb_table = state.head_t = None  # free the big buffers promptly

    def forward_step(self, inputs: torch.Tensor, state: LMState) -> torch.Tensor:
        """inputs [B, K, T] (shifted, as :meth:`shift_inputs`) continuing ``state`` -> logits [B, K, T, card]."""
        B, K, T = inputs.shape
        start, end = state.offset, state.offset + T
        if end > state.max_steps:
            raise ValueError(f"streaming state holds {state.max_steps} steps, asked for {end}")
        if T == 1:
            return self.decode_step(inputs[..., 0], state)[:, :, None]
        rows = inputs + state.emb_offsets[:, None]  # [B, K, T] rows of the stacked table
        x = F.embedding(rows, state.emb_table).sum(dim=1) + state.positions[start:end]  # [B, T, dim]
        if state.step_cond is not None:
            x = x + state.step_cond[:, start:end]
        x = self.transformer(x, state.cross_kv, state.cross_mask, cache=state.cache, offset=start)
        state.offset = end
        logits = torch.matmul(self.out_norm(x), state.head_t)  # [B, T, K*card]
        return logits.view(B, T, K, self.card).transpose(1, 2)  # [B, K, T, card] (a view: no copy)

    def decode_step(self, tokens: torch.Tensor, state: LMState, cfg: tp.Optional[float] = None,
                    extra_weights: tp.Sequence[float] = ()) -> torch.Tensor:
        """tokens [B, K] (the next input column) -> logits [B, K, card]: the per-step hot path of generation.

        With ``cfg``, the rows hold equal blocks [conditional; unconditional; extra branches...] (see
        :func:`_guide`), and the guided logits [B/n, K, card] are returned. Guidance is applied to the final hidden
        states before the (linear, bias-free) heads: ``W (u + cfg (c - u)) == Wu + cfg (Wc - Wu)``, so the largest
        matrix is applied to 1/n of the rows.
        """
        B, K = tokens.shape
        t = state.offset
        if t >= state.max_steps:
            raise ValueError(f"streaming state holds {state.max_steps} steps, asked for {t + 1}")
        x = F.embedding(tokens + state.emb_offsets, state.emb_table).sum(dim=1) + state.positions[t]  # [B, dim]
        if state.step_cond is not None:
            x = x + state.step_cond[:, t]
        x = self.transformer.step(x, state.cross_kv, state.cross_mask, state.cache, t)
        state.offset = t + 1
        h = F.layer_norm(x, (self.dim,), self.out_norm.weight, self.out_norm.bias, self.out_norm.eps)  # [B, dim]
        if cfg is not None:
            h = _guide(h, cfg, extra_weights)  # [B/n, dim]
        return torch.mm(h, state.head_t).view(h.shape[0], K, self.card)  # [B or B/2, K, card]

    def static_step(self, st: StaticDecodeState, noise: tp.Optional[torch.Tensor]) -> torch.Tensor:
        """One decoding step with fixed shapes and the sampling inside: noise [B, K, W] Exp(1) (:func:`_draw_noise`,
        None when greedy) -> guided logits [B, K, card]; updates ``st`` in place (cache, ``inputs``, ``t``).

        The same computation as one iteration of the cached loop in :meth:`generate` (``decode_step`` then
        :func:`sample_tokens` then the pattern write), but every step-dependent value is a tensor (``st.t``), the
        self-attention covers the whole preallocated window under a position mask
        (:meth:`TransformerLayer.static_step`), and the only Python branches depend on the call's settings. So
        ``torch.compile(fullgraph=True)`` compiles it once per generation setting, and on a GPU it can be captured as
        one CUDA graph (``decode="static-graph"``).
        """
        lm, t = st.lm, st.t
        B, K, _ = st.inputs.shape
        col = st.inputs.index_select(2, t)[..., 0]  # [B, K] input column t
        if st.n_branches > 1:
            col = col.repeat(st.n_branches, 1)  # [N, K]: the same tokens feed every guidance branch
        x = F.embedding(col + lm.emb_offsets, lm.emb_table).sum(dim=1) + lm.positions.index_select(0, t)  # [N, dim]
        if lm.step_cond is not None:
            x = x + lm.step_cond.index_select(1, t)[:, 0]
        window_mask = torch.zeros(st.window.shape, dtype=x.dtype, device=x.device)
        window_mask = window_mask.masked_fill(st.window > t, torch.finfo(x.dtype).min)[None, None, None]  # [1,1,1,S]
        x = self.transformer.static_step(x, lm.cross_kv, lm.cross_mask, lm.cache, t, window_mask)
        h = F.layer_norm(x, (self.dim,), self.out_norm.weight, self.out_norm.bias, self.out_norm.eps)  # [N, dim]
        if st.n_branches > 1:
            h = _guide(h, st.cfg, st.weights)  # [B, dim]
        logits = torch.mm(h, lm.head_t).view(B, K, self.card)  # [B, K, card]
        token = sample_with_noise(logits, noise, st.top_k, st.top_p, st.temperature)  # [B, K]
        nxt = t + 1
        kept = st.inputs.index_select(2, nxt)[..., 0]  # [B, K] special token / prompt code already there
        new = torch.where(st.free.index_select(1, nxt)[:, 0], token, kept)  # [B, K]
        st.inputs.index_copy_(2, nxt, new[..., None])
        t.add_(1)
        return logits

    # ---------------------------------------------------------------------------------------------- generation
    @staticmethod
    def _stack_conditions(branches: tp.Sequence[tp.Tuple[torch.Tensor, tp.Optional[torch.Tensor]]]
                          ) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """Stack n (cond [B, L_i, dim], mask [B, L_i] or None) branches into one batch [nB, max L_i], padding with
        masked slots."""
        def full(c, m):
            return torch.ones(c.shape[:2], dtype=torch.bool, device=c.device) if m is None else m

        pairs = [(c, full(c, m)) for c, m in branches]
        L = max(c.shape[1] for c, _ in pairs)
        conds = [F.pad(c, (0, 0, 0, L - c.shape[1])) for c, _ in pairs]
        masks = [F.pad(m, (0, L - m.shape[1]), value=False) for _, m in pairs]
        return torch.cat(conds, dim=0), torch.cat(masks, dim=0)  # [nB, L, dim], [nB, L]

    @torch.no_grad()  # not inference_mode: callers may edit the returned codes in place outside any mode
    def generate(self, cond: torch.Tensor, cond_mask: tp.Optional[torch.Tensor],
                 uncond: tp.Optional[torch.Tensor] = None, uncond_mask: tp.Optional[torch.Tensor] = None,
                 num_frames: int = 500, cfg: float = 3.0, top_k: int = 250, top_p: float = 0.0,
                 temperature: float = 1.0, prompt: tp.Optional[torch.Tensor] = None,
                 generator: Generators = None, progress: bool = False,
                 use_cache: bool = True, step_cond: tp.Optional[torch.Tensor] = None,
                 uncond_step_cond: tp.Optional[torch.Tensor] = None,
                 extra: tp.Sequence[GuidanceBranch] = (), decode: str = "cached") -> torch.Tensor:
        """Sample codes [B, K, num_frames] for cond [B, L, dim] (cond_mask [B, L] bool, True = attend).

        With ``uncond`` ([B, L', dim], e.g. the learned null condition or a negative prompt) both branches run as
        one batch of 2B and ``logits = uncond + cfg * (cond - uncond)``. ``prompt`` [B, K, T0] codes are kept as
        the first T0 frames and continued; the rng still advances through the prompt steps, so continuing
        ``generate(...)[..., :T0]`` with an identically seeded generator reproduces the one-go result.
        ``decode`` picks the decoder, all drawing the same numbers from ``generator`` in the same order (same
        tokens; tests): ``cached`` (KV cache, eager steps over the growing prefix), ``recompute`` (no cache: the
        whole prefix every step; the benchmark's baseline; ``use_cache=False`` is the same), ``static`` (the
        fixed-shape :meth:`static_step` with sampling inside), ``static-compiled`` (that step through
        ``torch.compile(fullgraph=True)``; the first call per setting compiles) and ``static-graph`` (the static
        step captured once as a CUDA graph and replayed; CUDA devices only).
        ``step_cond`` / ``uncond_step_cond`` [B, >=S, dim]: per-step additive conditions of the two branches (see
        :meth:`hidden`; a missing unconditional one is zeros).
        ``extra``: more guidance branches (:class:`GuidanceBranch`: ``cond_i [B, L_i, dim], mask_i, step_cond_i or
        None, w_i``), all run in the same batch: ``logits = c + (cfg - 1) (c - u) + Σ_i w_i (c - u_i)`` (with none, exactly the usual
        ``u + cfg (c - u)``). Used for two-condition guidance (video and tags, ``VMAS.generate(guide="both")``).
        """
        if decode not in DECODERS:
            raise ValueError(f"decode must be one of {', '.join(DECODERS)}, not {decode!r}")
        decode = decode if use_cache else "recompute"
        B = cond.shape[0]
        K, S = self.n_q, self.pattern.num_steps(num_frames)
        device = self.out_norm.weight.device
        if decode == "static-graph" and device.type != "cuda":
            raise ValueError(f"decode='static-graph' replays a CUDA graph: the model is on {device}; use "
                             "'static-compiled' or 'cached' there")
        extra = [GuidanceBranch(*e) for e in extra]
        guided = uncond is not None and (cfg != 1.0 or len(extra) > 0)
        n_branches = 2 + len(extra) if guided else 1
        weights = [e.weight for e in extra] if guided else []
        if guided:
            step_in = [step_cond, uncond_step_cond] + [e.step_cond for e in extra]
            cond, cond_mask = self._stack_conditions([(cond, cond_mask), (uncond, uncond_mask),
                                                      *[(e.cond, e.mask) for e in extra]])
            if any(st is not None for st in step_in):
                ref = next(st for st in step_in if st is not None)
                step_cond = torch.cat([torch.zeros_like(ref) if st is None else st for st in step_in], dim=0)
        if step_cond is not None and step_cond.shape[1] < S:
            raise ValueError(f"step_cond covers {step_cond.shape[1]} steps, generation needs {S}")

        # Pattern template: special where invalid, prompt codes where known; `free` marks what gets sampled.
        T0 = 0 if prompt is None else prompt.shape[-1]
        if T0 > num_frames:
            raise ValueError(f"prompt has {T0} frames, more than num_frames={num_frames}")
        codes = torch.zeros(B, K, num_frames, dtype=torch.long, device=device)
        if T0:
            codes[..., :T0] = prompt.to(device)
        seq, valid = self.pattern.build(codes, self.special_token)  # [B, K, S], [K, S]
        frame = torch.arange(S, device=device)[None, :] - torch.arange(K, device=device)[:, None]  # [K, S]
        free = valid & (frame >= T0)  # [K, S]
        logits_shape = (B, K, self.card)
        for _ in range(T0):  # steps 0..T0-1 are fully known (codebook k holds frame s-k < T0)
            _burn_noise(logits_shape, top_k, top_p, temperature, device, generator)

        def seq_upto(end: int) -> torch.Tensor:  # [B or 2B, K, end]: the same tokens feed both CFG branches
            return seq[..., :end].repeat(n_branches, 1, 1) if guided else seq[..., :end]

        def recompute(end: int) -> torch.Tensor:  # no cache: the whole prefix again; heads on the last step only
            h = self.hidden(seq_upto(end), cond, cond_mask, step_cond)[:, -1]  # [B or 2B, dim]
            if guided:
                h = _guide(h, cfg, weights)
            return torch.stack([head(h) for head in self.linears], dim=1)  # [B, K, card]

        steps = tqdm(range(T0, S), desc="generate", unit="step", disable=not progress, leave=False)
        with contextlib.ExitStack() as stack:
            state = stack.enter_context(self.streaming(cond, cond_mask, S, step_cond)) if decode != "recompute" else None
            if state is not None and T0 > 0:
                self.forward_step(self.shift_inputs(seq_upto(T0)), state)  # prefill the prompt steps in one chunk
            noise = _step_noise(logits_shape, S - T0, top_k, top_p, temperature, device, generator)
            if decode.startswith("static"):
                return self.pattern.revert(self._decode_static(
                    state, seq, free, steps, decode, n_branches, cfg, weights, top_k, top_p, temperature, noise))
            for s, eps in zip(steps, noise):
                if decode == "cached":
                    col = seq[:, :, s - 1] if s > 0 else seq.new_full((B, K), self.special_token)  # [B, K]
                    logits = (self.decode_step(col.repeat(n_branches, 1), state, cfg, weights) if guided
                              else self.decode_step(col, state))
                else:
                    logits = recompute(s + 1)
                token = sample_with_noise(logits, eps, top_k, top_p, temperature)  # [B, K] (= sample_tokens)
                seq[:, :, s] = torch.where(free[:, s], token, seq[:, :, s])
        return self.pattern.revert(seq)  # [B, K, num_frames]

    def static_state(self, state: LMState, seq: torch.Tensor, free: torch.Tensor, n_branches: int = 1,
                     cfg: float = 1.0, weights: tp.Sequence[float] = (), top_k: int = 250, top_p: float = 0.0,
                     temperature: float = 1.0) -> StaticDecodeState:
        """The buffers of :meth:`static_step` for ``state`` (a :meth:`streaming` state, possibly prefilled: its
        ``offset`` is the first step), seq [B, K, S] (special / prompt codes in place) and free [K, S] (sampled
        positions)."""
        B, K, S = seq.shape
        start = seq.new_full((B, K, 1), self.special_token)
        return StaticDecodeState(
            lm=state, inputs=torch.cat([start, seq], dim=2), free=F.pad(free, (1, 0), value=False),
            t=torch.full((1,), state.offset, dtype=torch.long, device=seq.device),
            window=torch.arange(S, device=seq.device), n_branches=n_branches, cfg=cfg, weights=tuple(weights),
            top_k=top_k, top_p=top_p, temperature=temperature)

    def _decode_static(self, state: LMState, seq: torch.Tensor, free: torch.Tensor, steps: tp.Iterable[int],
                       decode: str, n_branches: int, cfg: float, weights: tp.Sequence[float], top_k: int, top_p: float,
                       temperature: float, noise: tp.Iterator[tp.Optional[torch.Tensor]]) -> torch.Tensor:
        """The static decoders' loop over ``steps`` (pattern columns T0..S-1) after any prompt prefill: seq [B, K, S]
        (special / prompt codes in place) -> the completed seq [B, K, S]. ``noise``: each step's Exp(1) noise
        (:func:`_step_noise`, the cached loop's numbers).

        Per step, Python only hands over the noise and calls the step: no value comes back to Python until the end.
        """
        B, K, S = seq.shape
        steps = list(steps)
        st = self.static_state(state, seq, free, n_branches, cfg, weights, top_k, top_p, temperature)
        step = _compiled_static_step() if decode == "static-compiled" else MusicLM.static_step
        if decode == "static-graph" and steps:
            width = noise_width(self.card, top_k, top_p)
            step = _CudaGraphStep(step, self, st, None if temperature <= 0 else (B, K, width))
        for _, eps in zip(steps, noise):
            step(self, st, eps)
        return st.inputs[..., 1:]


_COMPILED_STEP: tp.Optional[tp.Callable] = None


def _compiled_static_step() -> tp.Callable:
    """``torch.compile(MusicLM.static_step, fullgraph=True)``, made once per process (dynamo keeps one graph per
    model shape and generation setting; ``dynamic=False``: every shape is a constant, the best kernels)."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(MusicLM.static_step, fullgraph=True, dynamic=False)
    return _COMPILED_STEP


class _CudaGraphStep:
    """:meth:`MusicLM.static_step` captured once as a CUDA graph, then replayed once per step (CUDA only).

    The graph reads the noise from its own buffer (each call copies the freshly drawn noise in) and updates the
    decode state in place, exactly as the eager step does. The one warm-up step (needed before capture: lazy
    library initialisation, allocations) runs at the first real step ``t0`` with dummy noise: it writes the cache
    at ``t0`` and pattern column ``t0 + 1``, both rewritten by the real step ``t0`` before anything reads them
    (columns that are not sampled keep their value either way), and ``t`` is put back afterwards.
    """

    def __init__(self, step: tp.Callable, model: MusicLM, st: StaticDecodeState,
                 noise_shape: tp.Optional[tp.Tuple[int, ...]]):
        self.noise = None if noise_shape is None else torch.ones(noise_shape, device=st.t.device)  # [B, K, W]
        t0 = st.t.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(model, st, self.noise)
        torch.cuda.current_stream().wait_stream(side)
        st.t.copy_(t0)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(model, st, self.noise)  # recorded, not run: t is t0 again at the first replay
        st.t.copy_(t0)

    def __call__(self, model: MusicLM, st: StaticDecodeState, noise: tp.Optional[torch.Tensor]) -> torch.Tensor:
        if noise is not None:
            self.noise.copy_(noise)
        self.graph.replay()
        return self.logits


# ------------------------------------------------------------------------------------------ pretrained weights
_DROPPED_PREFIXES = (
    "condition_provider.",  # audiocraft's T5 conditioner and its output projection (replaced by our fuser)
    "fuser.",  # audiocraft's condition fuser (no parameters in MusicGen, but some checkpoints list buffers)
    "enc_to_dec_proj.", "text_encoder.", "audio_encoder.",  # transformers' MusicgenForConditionalGeneration parts
    "encoder_projection.", "embed_positions.",  # sinusoidal table / text projection in other HF exports
)
_HF_RENAMES = (  # transformers name -> audiocraft / our name, applied in order on dotted keys
    (r"^(decoder\.)?model\.decoder\.", ""),
    (r"^(decoder\.)?lm_heads\.", "linears."),
    (r"^embed_tokens\.", "emb."),
    (r"^layer_norm\.", "out_norm."),
    (r"^layers\.", "transformer.layers."),
    (r"\.self_attn_layer_norm\.", ".norm1."),
    (r"\.encoder_attn_layer_norm\.", ".norm_cross."),
    (r"\.final_layer_norm\.", ".norm2."),
    (r"\.encoder_attn\.", ".cross_attention."),
    (r"\.fc1\.", ".linear1."),
    (r"\.fc2\.", ".linear2."),
    (r"\.mha\.", "."),  # audiocraft with custom=False wraps nn.MultiheadAttention as `.mha`
)


def musicgen_to_vmas_state_dict(state: tp.Mapping[str, torch.Tensor]) -> tp.Tuple[tp.Dict[str, torch.Tensor],
                                                                                   tp.List[str]]:
    """Map a MusicGen LM state dict (audiocraft or transformers layout) onto :class:`MusicLM` names.

    The one place where checkpoint layouts are reconciled. audiocraft names already are ours; transformers names
    are renamed and its separate ``q_proj/k_proj/v_proj`` are concatenated into ``in_proj_weight`` ([q; k; v]).
    Returns ``(state, dropped_keys)``: the text-condition projection and other non-LM parts are dropped, because
    our condition tokens come from the video/tag projections of the fuser instead.
    """
    out: tp.Dict[str, torch.Tensor] = {}
    dropped: tp.List[str] = []
    qkv: tp.Dict[str, tp.Dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = key
        for pattern, repl in _HF_RENAMES:
            name = re.sub(pattern, repl, name)
        if name.startswith(_DROPPED_PREFIXES):
            dropped.append(key)
            continue
        m = re.match(r"^(.*)\.([qkv])_proj\.weight$", name)
        if m:
            qkv.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        out[name] = value
    for prefix, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"MusicGen checkpoint: {prefix} has only {sorted(parts)} of q/k/v projections")
        out[f"{prefix}.in_proj_weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, dropped


def _torch_load(path: Path) -> tp.Any:
    """audiocraft's file holds an omegaconf config beside the weights: read leniently (:func:`vmas.loading.torch_load`)."""
    from vmas.loading import torch_load

    return torch_load(path, "torch checkpoint", lenient=True)


def _load_file(path: Path) -> tp.Dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.name.endswith(".index.json"):  # sharded transformers checkpoint
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state: tp.Dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_file(path.parent / shard))
        return state
    obj = _torch_load(path)
    if isinstance(obj, dict) and "best_state" in obj:  # audiocraft package: {best_state, xp.cfg, version, ...}
        obj = obj["best_state"]
        obj = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (audiocraft state_dict.bin or transformers "
                              "pytorch_model.bin)")
    return obj


_FOLDER_FILES = ("state_dict.bin", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _resolve(name_or_path: str) -> Path:
    """Local file, local folder, or hub name -> the file to read (audiocraft's state_dict.bin preferred)."""
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        return path
    if path.is_dir():
        for fname in _FOLDER_FILES:
            if (path / fname).is_file():
                return path / fname
        raise CheckpointError(f"{path}: no MusicGen weights inside (looked for {', '.join(_FOLDER_FILES)})")
    from huggingface_hub import hf_hub_download  # ships with transformers

    from vmas.loading import resolve_pretrained

    # one line at once when the hub is unreachable and the name is not cached (no retries: issue 36)
    resolve_pretrained(name_or_path, "model.lm.pretrained", "download it once with network access or give a local "
                       "path (an audiocraft state_dict.bin or a transformers MusicGen folder)")
    errors = []
    for fname in _FOLDER_FILES:
        try:
            found = Path(hf_hub_download(name_or_path, fname))
        except Exception as err:  # noqa: BLE001 - try the next layout, report all at the end
            errors.append(f"{fname}: {type(err).__name__}")
            continue
        if fname.endswith(".index.json"):
            for shard in set(json.loads(found.read_text())["weight_map"].values()):
                hf_hub_download(name_or_path, shard)
        return found
    raise CheckpointError(f"model.lm.pretrained={name_or_path}: not a local file/folder and not downloadable from the "
                          f"hub ({'; '.join(errors[:2])}); download it once with network access or give a local path")


def load_musicgen_lm_weights(model: MusicLM, name_or_path: tp.Union[str, Path]) -> tp.List[str]:
    """Load MusicGen LM weights into ``model``; returns the checkpoint keys that were dropped.

    Accepts an audiocraft ``state_dict.bin`` (or a folder holding one), a transformers ``MusicgenForCausalLM`` /
    ``MusicgenForConditionalGeneration`` folder (safetensors or pytorch_model.bin, sharded or not), or a hub name
    such as ``facebook/musicgen-medium``. Every LM parameter must be present with the right shape; the
    text-condition projection is dropped (our fuser replaces it).
    """
    path = _resolve(str(name_or_path))
    state, dropped = musicgen_to_vmas_state_dict(_load_file(path))
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)} but the model expects "
                                  f"{tuple(own[key].shape)}; set model.lm (dim/num_layers/num_heads/ffn_dim/n_q/card) "
                                  "to the checkpoint's sizes")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: not a MusicGen LM of this size (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); check model.lm.num_layers / n_q against the checkpoint")
    model.load_state_dict(state, strict=True)
    if dropped:
        logger.info("MusicGen weights from %s: dropped %d non-LM keys (text-condition projection etc.): %s",
                    path, len(dropped), ", ".join(dropped[:4]))
    return dropped
