"""Video ↔ music contrastive loss (SPEC §5): symmetric InfoNCE between the clip's video and the LM's music.

The music side is differentiable through the LM: the feature of a clip is the expected EnCodec latent under the
predicted token distributions, ``m = mean_t Σ_k softmax(logits_{t,k}) · C_k`` (C_k = k-th codebook, [card, D], no
gradient into the codec). The video side is the mean of the encoder tokens. Two linear heads map both into a shared
space where cosine similarities, scaled by a learnable inverse temperature, feed a cross-entropy in both directions.

Negatives are the other clips of the batch, gathered from every data-parallel rank when ``torch.distributed`` is
initialised. The gather is gradient-correct: each rank computes the loss of its own rows against all candidates,
the backward of the gather sums every rank's gradient for a row back onto the rank that owns it, and the usual
data-parallel gradient average then yields exactly the gradient of the global-batch loss.

The same heads embed videos and ground-truth music for the retrieval metric (:meth:`ContrastiveLoss.embed_video`,
:meth:`ContrastiveLoss.embed_music`).
"""
from __future__ import annotations

import logging
import math
import typing as tp

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import einsum
from torch import nn

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- features
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (gradcheck); bf16/fp16/fp32 compute in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def music_feature(logits: torch.Tensor, codebooks: torch.Tensor, valid: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
    """Expected codec latent of the predicted music: logits [B,K,S,card], codebooks [K,card,D] -> [B, D].

    ``mean over valid steps of Σ_k softmax(logits_k) @ C_k``. In the delay pattern every codebook has the same
    number of valid steps (T), so averaging each codebook over its own valid steps equals averaging the per-frame
    sum over frames. Averaging the probabilities first is exact (the map is linear) and avoids a [B,K,S,D] tensor.
    """
    B, K, S, card = logits.shape
    assert codebooks.shape[:2] == (K, card), f"codebooks {tuple(codebooks.shape)} do not match logits {(K, card)}"
    dtype = _compute_dtype(logits)
    probs = logits.to(dtype).softmax(dim=-1)  # [B, K, S, card]
    mask = torch.ones(K, S, dtype=dtype, device=logits.device) if valid is None else valid.to(dtype)  # [K, S]
    mean_probs = einsum(probs, mask, "b k s c, k s -> b k c") / mask.sum(-1).clamp_min(1)[:, None]  # [B, K, card]
    return einsum(mean_probs, codebooks.detach().to(dtype), "b k c, k c d -> b d")  # [B, D]


def music_feature_from_codes(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """The same feature for ground-truth codes (one-hot distributions): codes [B,K,T] -> [B, D]."""
    B, K, T = codes.shape
    cb = codebooks.detach()
    per_k = [cb[k][codes[:, k]].mean(dim=1) for k in range(K)]  # K x [B, D]
    return torch.stack(per_k, 0).sum(0).to(_compute_dtype(cb))


# --------------------------------------------------------------------------------------------------- InfoNCE
def info_nce(video: torch.Tensor, music: torch.Tensor, logit_scale: torch.Tensor,
             video_all: tp.Optional[torch.Tensor] = None, music_all: tp.Optional[torch.Tensor] = None,
             offset: int = 0, reduction: str = "mean") -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised embeddings.

    Row i of ``video`` [B,P] matches row ``offset + i`` of ``music_all`` [N,P] (default: ``music`` itself, N = B), and
    vice versa: ``0.5 * (CE(scale · v m_allᵀ, y) + CE(scale · m v_allᵀ, y))`` with ``y = offset + arange(B)``.
    ``reduction="sum"`` returns the sum over the B local rows (the distributed caller divides by the global N).
    """
    video_all = video if video_all is None else video_all
    music_all = music if music_all is None else music_all
    labels = torch.arange(video.shape[0], device=video.device) + offset  # [B]
    v2m = logit_scale * video @ music_all.t()  # [B, N]
    m2v = logit_scale * music @ video_all.t()  # [B, N]
    return 0.5 * (F.cross_entropy(v2m, labels, reduction=reduction) + F.cross_entropy(m2v, labels, reduction=reduction))


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns, to each rank, the sum over ranks of the gradient of its own rows.

    Written here (not ``torch.distributed.nn``) so it works on every backend, gloo included (no reduce_scatter or
    all_to_all needed): backward is one all_reduce of the full gradient, then each rank keeps its slice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: tp.Any) -> torch.Tensor:  # x [n, P] -> [W, n, P]
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.stack(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # [W, n, P] -> [n, P]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank], None


def gather_with_grad(x: torch.Tensor, group: tp.Any = None) -> tp.Tuple[torch.Tensor, int]:
    """Concatenate ``x`` [n_r, P] from every rank (sizes may differ) -> ([N, P], offset of this rank's rows)."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - x.shape[0]
    padded = F.pad(x, (0, 0, 0, pad)) if pad else x
    gathered = _GatherWithGrad.apply(padded, group)  # [W, max_n, P]
    rows = torch.cat([gathered[r, :sizes[r]] for r in range(world)], 0)  # [N, P]
    return rows, sum(sizes[:rank])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# --------------------------------------------------------------------------------------------------- module
class ContrastiveLoss(nn.Module):
    """Heads + learnable temperature + symmetric InfoNCE between video and (predicted) music.

    Args:
        video_dim (int): width C of the encoder tokens [B, Tv, C] (768 for Hiera-B).
        music_dim (int): codec latent width D (128 for EnCodec 32 kHz).
        proj_dim (int): shared embedding width (SPEC default 512).
        temperature_init (float): initial τ (0.07); learned as ``log(1/τ)``.
        min_temperature (float): τ is clamped to ``>= min_temperature`` (0.01, i.e. CLIP's logit scale <= 100).
        group: process group for gathering negatives (default: the world when distributed is initialised).
    """

    def __init__(self, video_dim: int, music_dim: int, proj_dim: int = 512, temperature_init: float = 0.07,
                 min_temperature: float = 0.01, group: tp.Any = None):
        super().__init__()
        if not 0 < min_temperature <= temperature_init:
            raise ValueError(f"need 0 < min_temperature ({min_temperature}) <= temperature_init ({temperature_init})")
        self.video_head = nn.Linear(video_dim, proj_dim, bias=False)
        self.music_head = nn.Linear(music_dim, proj_dim, bias=False)
        # shape [1], not 0-dim: DeepSpeed (0.19) views every parameter as bytes when it broadcasts rank 0's
        # weights, which fails on 0-dim tensors. Checkpoints from before hold a 0-dim value: see _load_from_state_dict.
        self.log_scale = nn.Parameter(torch.tensor([math.log(1.0 / temperature_init)]))  # [1]
        self.max_log_scale = math.log(1.0 / min_temperature)
        self.group = group
        self._warned_small_batch = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Accept checkpoints written when the temperature was a 0-dim parameter (reshaped to [1] here, the one
        place every ``load_state_dict`` path goes through: exports, torch-engine and DeepSpeed checkpoints)."""
        key = prefix + "log_scale"
        if key in state_dict and state_dict[key].ndim == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def logit_scale(self) -> torch.Tensor:
        """1/τ [1], clamped (the clamp stops the gradient at the cap, as in CLIP)."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach())

    # ---- embeddings (also used by the retrieval metric)
    def embed_video(self, video_tokens: torch.Tensor) -> torch.Tensor:
        """Encoder tokens [B, Tv, C] -> unit-norm embeddings [B, P]."""
        v = video_tokens.to(self.video_head.weight.dtype).mean(dim=1)  # [B, C]
        return F.normalize(self.video_head(v), dim=-1)

    def embed_music(self, logits: tp.Optional[torch.Tensor] = None, codebooks: tp.Optional[torch.Tensor] = None,
                    valid: tp.Optional[torch.Tensor] = None, codes: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predicted music (``logits`` [B,K,S,card] + ``valid`` [K,S]) or real music (``codes`` [B,K,T]) -> [B, P].

        ``codebooks`` [K, card, D] are the codec's (``Codec.codebooks()`` / ``VMAS.codebooks``).
        """
        if (logits is None) == (codes is None) or codebooks is None:
            raise ValueError("embed_music needs codebooks and exactly one of logits or codes")
        feat = music_feature(logits, codebooks, valid) if logits is not None else music_feature_from_codes(codes, codebooks)
        return F.normalize(self.music_head(feat.to(self.music_head.weight.dtype)), dim=-1)

    # ---- loss
    def forward(self, video_tokens: torch.Tensor, logits: torch.Tensor, valid: tp.Optional[torch.Tensor],
                codebooks: torch.Tensor) -> torch.Tensor:
        """video_tokens [B,Tv,C], logits [B,K,S,card], valid [K,S], codebooks [K,card,D] -> scalar loss.

        Distributed: the returned value is this rank's share, scaled so that the mean over ranks (what
        data-parallel gradient averaging optimises) is the InfoNCE of the global batch, even for unequal shards.
        """
        dtype = _compute_dtype(self.log_scale)  # bf16 heads: similarities and softmax still in float32
        v = self.embed_video(video_tokens).to(dtype)  # [B, P]
        m = self.embed_music(logits, codebooks, valid).to(dtype)  # [B, P]
        scale = self.logit_scale.to(dtype)  # [1]: broadcasts over the [B, N] similarities
        if _distributed():
            v_all, offset = gather_with_grad(v, self.group)
            m_all, _ = gather_with_grad(m, self.group)
            world = dist.get_world_size(self.group)
        else:
            v_all, m_all, offset, world = v, m, 0, 1
        n_global = v_all.shape[0]
        if n_global < 2:
            if not self._warned_small_batch:
                logger.warning("contrastive loss needs >= 2 clips per (global) batch to have negatives; "
                               "got %d, so it is 0 (raise data.batch_size)", n_global)
                self._warned_small_batch = True
            # zero that still touches every parameter, so data-parallel wrappers see no unused parameters
            return (v.sum() + m.sum() + scale.sum()) * 0.0
        loss_sum = info_nce(v, m, scale, v_all, m_all, offset=offset, reduction="sum")
        return loss_sum * (world / n_global)
