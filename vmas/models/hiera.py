"""Hiera video encoder, modified for 96-frame clips as in VMAs (SPEC §3).

Reads bottom-up: attention -> block -> patch embed -> encoder -> named factories -> pretrained loading.

What differs from stock Hiera (``hiera_base_16x224`` of facebookresearch/hiera and timm):

- **Per-stage Q-pool strides.** Stock Hiera pools every stage by the same stride. VMAs pools by ``(1,4,4)``,
  ``(1,7,7)``, ``(1,2,2)`` so that 56x56 tokens reach 1x1 and the output is one token per two frames: ``[B, 48, 768]``.
- **Mask unit (1, 28, 28).** The stock unit (1, 8, 8) is not a product of the unroll strides 4, 7, 2, so its windows
  would be scattered token sets, not boxes (see :mod:`vmas.models.hiera_utils`). Windows must be a prefix product of
  the strides: (1,4,4), (1,28,28) or (1,56,56). We use (1,28,28): stage 1 attends within 28x28 boxes of one
  temporal slice (784 tokens), stage 2 within 7x7 boxes (49 tokens), the first stage-3 block pools each 7x7 box into
  one query, and stages 3-4 attend globally (48x2x2 and 48 tokens). Cost 120.5 GMACs at 96x224² (paper: 130.7);
  (1,56,56) costs 266 GMACs and global attention everywhere 9386.
- **Rule when a pooling stride does not fit the window** (stride does not divide it): that block and all later
  blocks attend globally. A window that has shrunk to one token without pooling also attends globally (a one-token
  window would make attention an identity map). Neither case occurs in the stock or VMAs configurations.
- **Output tokens.** ``forward`` returns the last stage averaged over space and layer-normed (the pretrained
  ``norm``), one token per temporal position: ``[B, T', C]``. For VMAs the last grid is 48x1x1, so nothing is
  averaged. (Stock Hiera averages over time too, then classifies; we keep time.)

Q-pooling has no parameters, so a stock ``hiera_base_16x224`` checkpoint loads into every variant of Base; only the
temporal position table changes size (8 -> 48, interpolated in :func:`checkpoint_filter_fn`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import typing as tp
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from vmas.errors import CheckpointError, ConfigError
from vmas.models.hiera_utils import merge_windows, prefix_products, q_pool, reroll, split_windows, unroll, window_plan

logger = logging.getLogger(__name__)

Size3 = tp.Sequence[int]


# --------------------------------------------------------------------------------------------------- attention
class MaskUnitAttention(nn.Module):
    """Multi-head attention over unrolled tokens, either within mask units (windows) or globally, with Q-pooling.

    Args:
        dim (int): input channels.
        dim_out (int): output channels (doubles at a stage transition).
        heads (int): attention heads.
        q_stride (int): flattened pooling stride (e.g. 4*4 = 16); queries are max-pooled by it, keys/values are not.
        window_size (int): tokens per window *after* pooling; 0 = global attention.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: int = 1, window_size: int = 0):
        super().__init__()
        self.dim_out, self.heads, self.q_stride, self.window_size = dim_out, heads, q_stride, window_size
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, N, dim]`` unrolled tokens -> ``[B, N / q_stride, dim_out]``."""
        B, N, _ = x.shape
        num_windows = N // (self.q_stride * self.window_size) if self.window_size else 1
        qkv = split_windows(self.qkv(x), num_windows)  # [B, W, L, 3*dim_out]
        # windows go into the batch axis: 4-D inputs let SDPA pick its fused (flash / memory-efficient) kernels
        q, k, v = rearrange(qkv, "b w l (three h d) -> three (b w) h l d", three=3, h=self.heads)
        if self.q_stride > 1:
            # the pooling group of each query is the outermost chunk of its window (see hiera_utils.unroll)
            q = q.unflatten(2, (self.q_stride, -1)).amax(dim=2)  # [B*W, h, L/s, d]
        # the original Hiera did not use SDPA; it is numerically the same and much cheaper in memory
        x = F.scaled_dot_product_attention(q, k, v)  # [B*W, h, L', d]
        x = merge_windows(rearrange(x, "(b w) h l d -> b w l (h d)", w=num_windows))  # [B, N', dim_out]
        return self.proj(x)


# --------------------------------------------------------------------------------------------------- block
class Mlp(nn.Module):
    """Two-layer GELU MLP (names ``fc1``/``fc2`` as in the Hiera checkpoints)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class HieraBlock(nn.Module):
    """Pre-norm transformer block. At a stage transition the residual is projected to ``dim_out`` and max-pooled
    by the same stride as the queries, so the block maps ``[B, N, dim] -> [B, N / q_stride, dim_out]``."""

    def __init__(self, dim: int, dim_out: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 q_stride: int = 1, window_size: int = 0):
        super().__init__()
        self.dim, self.dim_out, self.drop_path = dim, dim_out, drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, window_size)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:
            x = q_pool(self.proj(x_norm), self.attn.q_stride)  # [B, N/s, dim_out]; pooling the normed input, as stock
        x = x + drop_path(self.attn(x_norm), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


# --------------------------------------------------------------------------------------------------- patch embed
class PatchEmbed(nn.Module):
    """Conv3d patchifier: ``[B, 3, T, H, W] -> [B, T*H*W / strides, C]`` in raster (t, h, w) order."""

    def __init__(self, dim_in: int, dim_out: int, kernel: Size3, stride: Size3, padding: Size3):
        super().__init__()
        self.proj = nn.Conv3d(dim_in, dim_out, kernel_size=tuple(kernel), stride=tuple(stride),
                              padding=tuple(padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b c t h w -> b (t h w) c")


# --------------------------------------------------------------------------------------------------- encoder
class VideoHiera(nn.Module):
    """Hiera video encoder with per-stage Q-pool strides (VMAs). Constructor args are plain data; the fields of
    ``model.encoder`` reach them by name through :func:`vmas.builders.build_encoder`.

    Args:
        num_frames (int): input frames T (the temporal position table has ``T / patch_stride[0]`` rows).
        image_size (int): square input side.
        embed_dim (int): stage-1 channels; doubled at each stage transition.
        num_heads (int): stage-1 heads; doubled at each stage transition.
        stages (list[int]): blocks per stage.
        q_strides (list[list[int]]): (t, h, w) pooling stride of each stage transition (len(stages) - 1 of them).
        mask_unit_size (list[int]): stage-1 window (t, h, w) in tokens; must be a prefix product of ``q_strides``.
        mask_unit_attn (list[bool]): which stages use windowed attention (applied with Hiera's one-block lag: the
            first block of a stage still uses the previous stage's setting, on the pooled window).
        patch_kernel, patch_stride, patch_padding (list[int]): Conv3d patch embed.
        mlp_ratio (float): MLP hidden size / dim.
        drop_path_rate (float): stochastic depth at the last block (linear from 0).
        grad_checkpointing (bool): recompute block activations in backward (saves memory at paper size).
    """

    def __init__(
        self,
        num_frames: int = 96,
        image_size: int = 224,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: tp.Sequence[int] = (2, 3, 16, 3),
        q_strides: tp.Sequence[Size3] = ((1, 4, 4), (1, 7, 7), (1, 2, 2)),
        mask_unit_size: Size3 = (1, 28, 28),
        mask_unit_attn: tp.Sequence[bool] = (True, True, False, False),
        patch_kernel: Size3 = (3, 7, 7),
        patch_stride: Size3 = (2, 4, 4),
        patch_padding: Size3 = (1, 3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.config = dict(num_frames=num_frames, image_size=image_size, embed_dim=embed_dim, num_heads=num_heads,
                           stages=list(stages), q_strides=[list(s) for s in q_strides],
                           mask_unit_size=list(mask_unit_size), mask_unit_attn=list(mask_unit_attn),
                           patch_kernel=list(patch_kernel), patch_stride=list(patch_stride),
                           patch_padding=list(patch_padding), mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
                           grad_checkpointing=grad_checkpointing)
        schedule = [tuple(int(v) for v in s) for s in q_strides]
        self.input_size = (num_frames, image_size, image_size)
        # [T, H, W] tokens after the patch embed (Conv3d output size)
        self.grid = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(self.input_size, patch_kernel, patch_stride,
                                                                   patch_padding)]
        self.schedule = schedule
        self.grad_checkpointing = grad_checkpointing
        self._check(stages, schedule, mask_unit_size, mask_unit_attn)

        # token grid of every stage, and the window (t, h, w) of every stage (None = global)
        self.stage_grids = [list(self.grid)]
        for s in schedule:
            self.stage_grids.append([g // st for g, st in zip(self.stage_grids[-1], s)])
        plan = window_plan(mask_unit_size, schedule)

        self.patch_embed = PatchEmbed(3, embed_dim, patch_kernel, patch_stride, patch_padding)
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, self.grid[1] * self.grid[2], embed_dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, self.grid[0], embed_dim))

        depth = sum(stages)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear 0 -> rate (plain floats)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        self.blocks = nn.ModuleList()
        dim, heads, stage = embed_dim, num_heads, 0
        for i in range(depth):
            dim_out, q_stride = dim, 1
            windowed = mask_unit_attn[stage]  # lag by one block: read before moving to the next stage
            if i - 1 in self.stage_ends:  # first block of a new stage: pool, widen
                stage += 1
                dim_out, heads = dim * 2, heads * 2
                q_stride = math.prod(schedule[stage - 1])
            window = plan[stage]
            if window is None or (math.prod(window) == 1 and q_stride == 1):
                windowed = False
            self.blocks.append(HieraBlock(dim, dim_out, heads, mlp_ratio, dpr[i], q_stride,
                                          math.prod(window) if windowed else 0))
            dim = dim_out
        self.out_dim = dim
        self.stage_dims = [embed_dim * 2**k for k in range(len(stages))]
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._init_weights()

    def _check(self, stages, schedule, mask_unit_size, mask_unit_attn) -> None:
        where = "model.encoder"
        if len(schedule) != len(stages) - 1 or any(len(s) != 3 for s in schedule):
            raise ConfigError(f"{where}.q_strides needs {len(stages) - 1} (t, h, w) strides, one per stage "
                              f"transition, got {schedule}")
        if len(mask_unit_attn) != len(stages):
            raise ConfigError(f"{where}.mask_unit_attn needs one flag per stage ({len(stages)}), got {mask_unit_attn}")
        total = prefix_products(schedule)[-1]
        if any(g % t or g == 0 for g, t in zip(self.grid, total)):
            raise ConfigError(f"{where}: token grid {self.grid} (num_frames/image_size divided by patch_stride) is not "
                              f"divisible by the product of q_strides {list(total)}: change image_size or q_strides")
        if window_plan(mask_unit_size, schedule) is None:
            valid = ", ".join(str(list(p)) for p in prefix_products(schedule))
            raise ConfigError(f"{where}.mask_unit_size={list(mask_unit_size)} is not a product of leading q_strides, "
                              f"so its windows would not be boxes: use one of {valid}")

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed_spatial, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_temporal, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv3d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.constant_(m.bias, 0.02 if isinstance(m, nn.Linear) else 0.0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.constant_(m.bias, 0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def pos_embed(self) -> torch.Tensor:
        """Separable position embedding, ``[1, T*H*W, C]``: a spatial table shared by all frames + a temporal one."""
        T, H, W = self.grid
        spatial = rearrange(self.pos_embed_spatial, "1 (h w) c -> 1 1 h w c", h=H, w=W)
        temporal = rearrange(self.pos_embed_temporal, "1 t c -> 1 t 1 1 c")
        return rearrange(spatial + temporal, "1 t h w c -> 1 (t h w) c")

    def forward(self, x: torch.Tensor, return_intermediates: bool = False):
        """x: ``float [B, 3, T, H, W]`` (ImageNet-normalised) -> tokens ``[B, T', C]``; with ``return_intermediates``
        also the per-stage features ``[B, T_k, H_k, W_k, C_k]``."""
        B, _, T, H, W = x.shape
        if (T, H, W) != self.input_size:
            raise ConfigError(f"encoder built for {self.input_size} (T, H, W) but got {(T, H, W)}: make "
                              "model.encoder.num_frames/image_size match data.num_frames/image_size")
        x = self.patch_embed(x) + self.pos_embed()  # [B, N, C] raster order
        x = unroll(x, self.grid, self.schedule)  # [B, N, C] stride groups outermost
        intermediates = []
        stage = 0
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in self.stage_ends:
                if return_intermediates or i == self.stage_ends[-1]:
                    intermediates.append(reroll(x, self.stage_grids[stage], self.schedule[stage:]))
                stage += 1
        last = intermediates[-1]  # [B, T', H', W', C]
        tokens = self.norm(last.mean(dim=(2, 3)))  # [B, T', C]
        return (tokens, intermediates) if return_intermediates else tokens

    def stage_shapes(self) -> tp.List[tp.List[int]]:
        """``[T, H, W, C]`` of each stage's output (no forward needed)."""
        return [[*g, c] for g, c in zip(self.stage_grids, self.stage_dims)]

    def out_shape(self) -> tp.List[int]:
        return [self.stage_grids[-1][0], self.out_dim]


# --------------------------------------------------------------------------------------------------- factories
PRESETS: tp.Dict[str, tp.Dict[str, tp.Any]] = {
    # VMAs encoder (SPEC §3): Hiera-B, 96x224², strides (1,4,4)/(1,7,7)/(1,2,2), out [B, 48, 768]
    "vmas_hiera_base": dict(num_frames=96, image_size=224, embed_dim=96, num_heads=1, stages=[2, 3, 16, 3],
                            q_strides=[[1, 4, 4], [1, 7, 7], [1, 2, 2]], mask_unit_size=[1, 28, 28]),
    # stock Hiera-B video (facebookresearch/hiera hiera_base_16x224): 16x224², (1,2,2) x3, unit (1,8,8), out [B, 8, 768]
    "hiera_base_16x224": dict(num_frames=16, image_size=224, embed_dim=96, num_heads=1, stages=[2, 3, 16, 3],
                              q_strides=[[1, 2, 2]] * 3, mask_unit_size=[1, 8, 8]),
    # toy size for tests and configs/debug.yaml: 24x32², dim 16, one block per stage, out [B, 12, 128]
    "hiera_debug": dict(num_frames=24, image_size=32, embed_dim=16, num_heads=1, stages=[1, 1, 1, 1],
                        q_strides=[[1, 2, 2]] * 3, mask_unit_size=[1, 4, 4]),
}


def _create(arch: str, pretrained: str, overrides: dict) -> VideoHiera:
    model = VideoHiera(**{**PRESETS[arch], **overrides})
    if pretrained:
        load_hiera_weights(model, pretrained)
    return model


def vmas_hiera_base(pretrained: str = "", **kwargs) -> VideoHiera:
    """VMAs encoder (SPEC §3), ``[B, 3, 96, 224, 224] -> [B, 48, 768]``; ``pretrained``: hub name or path."""
    return _create("vmas_hiera_base", pretrained, kwargs)


def hiera_base_16x224(pretrained: str = "", **kwargs) -> VideoHiera:
    """Stock Hiera-B video, ``[B, 3, 16, 224, 224] -> [B, 8, 768]`` (last stage 8x7x7 averaged over space)."""
    return _create("hiera_base_16x224", pretrained, kwargs)


def hiera_debug(pretrained: str = "", **kwargs) -> VideoHiera:
    """Toy encoder, ``[B, 3, 24, 32, 32] -> [B, 12, 128]``."""
    return _create("hiera_debug", pretrained, kwargs)


ENCODERS: tp.Dict[str, tp.Callable[..., VideoHiera]] = {
    "vmas_hiera_base": vmas_hiera_base,
    "hiera_base_16x224": hiera_base_16x224,
    "hiera_debug": hiera_debug,
}


def available_encoders() -> tp.List[str]:
    return sorted(ENCODERS)


# --------------------------------------------------------------------------------------------------- pretrained
_FB_URL = "https://dl.fbaipublicfiles.com/hiera/"
PRETRAINED: tp.Dict[str, str] = {
    # facebookresearch/hiera video checkpoints ({"model_state": state_dict}); the same names as their torch.hub entry
    # ``torch.hub.load("facebookresearch/hiera", "hiera_base_16x224", checkpoint="mae_k400_ft_k400")``
    "hiera_base_16x224.mae_k400_ft_k400": _FB_URL + "hiera_base_16x224.pth",
    "hiera_base_16x224.mae_k400": _FB_URL + "mae_hiera_base_16x224.pth",
}
PRETRAINED["hiera_base_16x224"] = PRETRAINED["hiera_base_16x224.mae_k400_ft_k400"]

# keys of upstream checkpoints that are not part of the encoder, with the reason they are skipped
_SKIP = (
    (("head.projection.", "head.fc."), "classifier head (the encoder returns tokens, not class logits)"),
    (("decoder", "mask_token", "multi_scale_fusion_heads.", "pred_head."), "MAE decoder (pre-training only)"),
)


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_hiera_weights` did: tensors loaded, skipped (with reasons), resized, left at init."""

    loaded: tp.List[str]
    skipped: tp.Dict[str, str]
    resized: tp.Dict[str, str]
    missing: tp.List[str]

    def summary(self) -> str:
        reasons: tp.Dict[str, tp.List[str]] = {}
        for key, why in self.skipped.items():
            reasons.setdefault(why, []).append(key)
        parts = [f"loaded {len(self.loaded)} tensors"]
        parts += [f"resized {k} {v}" for k, v in self.resized.items()]
        parts += [f"skipped {', '.join(keys)}: {why}" for why, keys in reasons.items()]
        if self.missing:
            parts.append(f"left at init: {', '.join(self.missing)}")
        return "; ".join(parts)


def _resize_temporal(v: torch.Tensor, length: int) -> torch.Tensor:
    """``[1, T0, C] -> [1, T, C]`` by linear interpolation over time (half-pixel centres)."""
    return F.interpolate(v.transpose(1, 2), size=length, mode="linear", align_corners=False).transpose(1, 2)


def _resize_spatial(v: torch.Tensor, hw: tp.Tuple[int, int]) -> torch.Tensor:
    """``[1, H0*W0, C] -> [1, H*W, C]`` by bicubic interpolation of the (square) table."""
    side = math.isqrt(v.shape[1])
    grid = rearrange(v, "1 (h w) c -> 1 c h w", h=side)
    grid = F.interpolate(grid, size=hw, mode="bicubic", align_corners=False)
    return rearrange(grid, "1 c h w -> 1 (h w) c")


def checkpoint_filter_fn(state_dict: tp.Mapping[str, tp.Any], model: VideoHiera) -> tp.Tuple[dict, LoadReport]:
    """THE key mapping: facebookresearch/hiera (``{"model_state": ...}``, ``norm.*``, ``head.projection.*``, MAE
    ``encoder_norm.*``) and timm (``head.norm.*``, ``head.fc.*``) state dicts -> :class:`VideoHiera` names.

    Position tables are interpolated to the model's grid (the temporal one 8 -> 48 for the VMAs encoder); anything
    that has no counterpart or does not fit is skipped and the reason recorded.
    """
    for wrapper in ("model_state", "state_dict", "model"):
        if isinstance(state_dict.get(wrapper), tp.Mapping):
            state_dict = state_dict[wrapper]
            break
    own = model.state_dict()
    out: tp.Dict[str, torch.Tensor] = {}
    report = LoadReport(loaded=[], skipped={}, resized={}, missing=[])
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        reason = next((why for prefixes, why in _SKIP if key.startswith(prefixes)), None)
        if reason:
            report.skipped[key] = reason
            continue
        for old, new in (("head.norm.", "norm."), ("encoder_norm.", "norm.")):
            if key.startswith(old):
                key = new + key[len(old):]
        if key not in own:
            report.skipped[key] = ("joint (non-separable) position table of an image model; use a video checkpoint"
                                   if key.startswith("pos_embed") else "no such parameter in VideoHiera")
            continue
        if not isinstance(value, torch.Tensor):
            report.skipped[key] = "not a tensor"
            continue
        target = own[key].shape
        if key == "pos_embed_temporal" and value.ndim == 3 and value.shape != target:
            report.resized[key] = f"{value.shape[1]} -> {target[1]} (linear)"
            value = _resize_temporal(value.float(), target[1])
        elif key == "pos_embed_spatial" and value.ndim == 3 and value.shape != target:
            report.resized[key] = f"{value.shape[1]} -> {target[1]} (bicubic)"
            value = _resize_spatial(value.float(), tuple(model.grid[1:]))
        if value.shape != target:
            report.skipped[key] = f"shape {tuple(value.shape)} does not fit {tuple(target)}"
            continue
        out[key] = value
    report.loaded = sorted(out)
    report.missing = sorted(k for k in own if k not in out)
    return out, report


def _cached_download(name: str) -> Path:
    """Local file for a hub name: the torch.hub cache, else a download when online, else a CheckpointError."""
    url = PRETRAINED[name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    hint = f"download {url} to {path} (or set model.encoder.pretrained to a local file)"
    offline = {os.environ.get(k, "").upper() for k in ("VMAS_OFFLINE", "HF_HUB_OFFLINE")} & {"1", "ON", "YES", "TRUE"}
    if offline:
        raise CheckpointError(f"Hiera checkpoint '{name}' is not cached and downloads are off: {hint}")
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as err:  # network errors come in many types
        raise CheckpointError(f"cannot download Hiera checkpoint '{name}' ({type(err).__name__}): {hint}") from None
    return path


def _read_state_dict(path: Path) -> tp.Mapping[str, tp.Any]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable Hiera state dict ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); expected a .pth/.safetensors file "
                              f"from facebookresearch/hiera or timm") from None


def load_hiera_weights(model: VideoHiera, name_or_path: tp.Union[str, os.PathLike]) -> LoadReport:
    """Load a Hiera video checkpoint into ``model`` (non-strict) and log what was skipped and why.

    Args:
        model: the encoder (any VideoHiera whose widths match the checkpoint; strides and frame count may differ).
        name_or_path: a local ``.pth``/``.safetensors`` file (facebookresearch/hiera or timm format) or a hub name
            from :data:`PRETRAINED` (cached under ``torch.hub.get_dir()/checkpoints``).
    """
    path = Path(os.fspath(name_or_path)).expanduser()
    if not path.is_file():
        if str(name_or_path) not in PRETRAINED:
            raise CheckpointError(f"Hiera checkpoint '{name_or_path}' is neither a file nor a known name "
                                  f"({', '.join(sorted(PRETRAINED))}): fix model.encoder.pretrained")
        path = _cached_download(str(name_or_path))
    state, report = checkpoint_filter_fn(_read_state_dict(path), model)
    own = len(model.state_dict())
    if len(report.loaded) < own // 2:
        raise CheckpointError(f"{path}: only {len(report.loaded)} of {own} encoder tensors fit "
                              f"({report.summary()[:200]}...): pick the model.encoder.arch of this checkpoint")
    model.load_state_dict(state, strict=False)
    logger.info("Hiera weights from %s: %s", path, report.summary())
    return report
