"""VideoHiera: layout (unroll/windows), stage shapes, parity with timm and facebookresearch/hiera, checkpoint loading.

Base-size models are built on the ``meta`` device (no init cost) and materialised with ``to_empty`` when real
numbers are needed; the only real Base init is the timm model whose state dict the loading tests save.
"""
import logging
import math

import pytest
import torch

from vmas.builders import build_encoder
from vmas.config import EncoderConfig, load_config
from vmas.errors import CheckpointError, ConfigError
from vmas.models import hiera_utils as hu
from vmas.models.hiera import (
    PRESETS,
    VideoHiera,
    available_encoders,
    checkpoint_filter_fn,
    hiera_base_16x224,
    hiera_debug,
    load_hiera_weights,
    vmas_hiera_base,
)

STOCK_TIMM = dict(q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4),
                  patch_padding=(1, 3, 3), sep_pos_embed=True, embed_dim=96, num_heads=1, stages=(2, 3, 16, 3))


def on_meta(fn, **kwargs) -> VideoHiera:
    with torch.device("meta"):
        return fn(**kwargs)


def materialise(model: VideoHiera, seed: int = 0) -> VideoHiera:
    """Meta (or uninitialised) model -> CPU model with random values, without running the slow init."""
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def coords(grid):
    """``[1, N, 3]`` float (t, h, w) coordinate of every token of a raster grid."""
    t, h, w = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")
    return torch.stack([t, h, w], -1).reshape(1, -1, 3).float()


# --------------------------------------------------------------------------------------------------- layout
def test_unroll_reroll_and_pooling_match_raster_ops():
    grid, schedule = [4, 56, 56], [(1, 4, 4), (1, 7, 7), (1, 2, 2)]
    x = torch.randn(2, math.prod(grid), 5)
    u = hu.unroll(x, grid, schedule)
    assert not torch.equal(u, x)
    assert torch.equal(hu.reroll(u, grid, schedule).reshape(2, -1, 5), x)
    # q_pool on the unrolled order == 4x4 max-pool of the raster grid, still unrolled by the remaining strides
    pooled = hu.reroll(hu.q_pool(u, 16), [4, 14, 14], schedule[1:])
    expected = x.reshape(2, 4, 14, 4, 14, 4, 5).amax(dim=(3, 5))
    assert torch.equal(pooled, expected)


def test_vmas_windows_are_spatiotemporal_boxes():
    """Feed token coordinates through the model's own unroll / pooling / window split and check every window."""
    model = on_meta(vmas_hiera_base)
    grid, schedule = model.grid, model.schedule
    xyz = hu.unroll(coords(grid), grid, schedule)  # [1, N, 3]
    b0, b2 = model.blocks[0].attn, model.blocks[2].attn  # stage 1, and the pooling block of stage 2
    assert (b0.window_size, b2.q_stride, b2.window_size) == (784, 16, 49)

    win = hu.split_windows(xyz, xyz.shape[1] // b0.window_size)[0]  # [W, L, 3]
    extent = win.amax(1) - win.amin(1) + 1
    assert win.shape == (48 * 2 * 2, 784, 3)
    assert torch.equal(extent, torch.tensor([1.0, 28, 28]).expand_as(extent))  # 1x28x28 boxes ...
    assert torch.equal(win.amin(1)[:, 1:] % 28, torch.zeros(len(win), 2))  # ... aligned to the 28-grid ...
    assert len(torch.unique(win.amin(1), dim=0)) == len(win)  # ... each box once: they tile the grid

    # stage 2: pooled token i covers a 4x4 box; its max coordinate // 4 is its stage-2 coordinate
    xyz2 = torch.div(hu.q_pool(xyz, b2.q_stride), torch.tensor([1.0, 4, 4]), rounding_mode="floor")
    win2 = hu.split_windows(xyz2, xyz2.shape[1] // b2.window_size)[0]
    extent2 = win2.amax(1) - win2.amin(1) + 1
    assert torch.equal(extent2, torch.tensor([1.0, 7, 7]).expand_as(extent2))
    assert len(torch.unique(win2.reshape(-1, 3), dim=0)) == 48 * 14 * 14


def test_stock_mask_unit_would_not_be_boxes_and_is_rejected():
    grid, schedule = [48, 56, 56], [(1, 4, 4), (1, 7, 7), (1, 2, 2)]
    xyz = hu.unroll(coords(grid), grid, schedule)
    win = hu.split_windows(xyz, xyz.shape[1] // 64)[0]
    extent = win.amax(1) - win.amin(1) + 1
    assert (extent[:, 1] > 8).any()  # a 64-token "window" under this layout spans more than 8 rows
    with pytest.raises(ConfigError, match=r"mask_unit_size=\[1, 8, 8\].*\[1, 28, 28\]"):
        on_meta(vmas_hiera_base, mask_unit_size=[1, 8, 8])


def test_first_block_mixes_only_within_its_window():
    """End to end: perturbing one token changes exactly the tokens of its 4x4 mask unit after a windowed block."""
    model = hiera_debug().eval()
    grid = model.grid  # [12, 8, 8]
    x = torch.randn(1, math.prod(grid), 16)
    x2 = x.clone().reshape(1, *grid, 16)
    x2[0, 5, 6, 1] += torch.randn(16)  # token (t=5, h=6, w=1): its window is t=5, h 4..7, w 0..3
    with torch.no_grad():
        y = [hu.reroll(model.blocks[0](hu.unroll(v.reshape(1, -1, 16), grid, model.schedule)), grid, model.schedule)
             for v in (x, x2)]
    changed = ((y[0] - y[1]).abs().amax(-1) > 0)[0]  # [T, H, W]
    expected = torch.zeros(grid, dtype=torch.bool)
    expected[5, 4:8, 0:4] = True
    assert torch.equal(changed, expected)


# --------------------------------------------------------------------------------------------------- shapes
def test_vmas_stage_shapes_on_meta():
    model = on_meta(vmas_hiera_base)
    x = torch.empty(1, 3, 96, 224, 224, device="meta")
    with torch.no_grad():
        tokens, stages = model(x, return_intermediates=True)
    expected = [[48, 56, 56, 96], [48, 14, 14, 192], [48, 2, 2, 384], [48, 1, 1, 768]]
    assert [list(s.shape[1:]) for s in stages] == expected == model.stage_shapes()
    assert list(tokens.shape) == [1, 48, 768] and model.out_dim == 768 and model.out_shape() == [48, 768]
    # lag-by-one rule: windowed in stages 1-2 and in the first (pooling) block of stage 3, global after
    windows = [b.attn.window_size for b in model.blocks]
    assert windows[:7] == [784, 784, 49, 49, 49, 1, 0] and set(windows[7:]) == {0}


@pytest.mark.parametrize("preset,tokens", [("debug", [12, 128]), ("tiny", [48, 256]), ("paper", [48, 768])])
def test_presets_build_from_config(preset, tokens):
    cfg = load_config(f"configs/{preset}.yaml").model.encoder
    with torch.device("meta"):
        model = build_encoder(cfg, load_weights=False)
    assert model.out_shape() == tokens
    assert model.input_size == (cfg.num_frames, cfg.image_size, cfg.image_size)


def test_tiny_preset_forward_gives_48_tokens():
    model = build_encoder(load_config("configs/tiny.yaml").model.encoder, load_weights=False).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 64, 64))
    assert out.shape == (1, 48, 256)
    # output tokens are layer-normed (weight 1, bias 0.02 at init)
    assert torch.allclose(out.mean(-1), torch.full((1, 48), 0.02), atol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="arch='hiera_huge'"):
        build_encoder(EncoderConfig(arch="hiera_huge"))
    with pytest.raises(ConfigError, match="not divisible"):
        hiera_debug(image_size=40)
    with pytest.raises(ConfigError, match=r"built for \(24, 32, 32\)"):
        hiera_debug()(torch.randn(1, 3, 16, 32, 32))
    assert available_encoders() == sorted(PRESETS)


def test_arch_geometry_mismatch_is_logged(caplog):
    cfg = EncoderConfig(arch="hiera_base_16x224")  # stock name, VMAs default geometry
    with caplog.at_level(logging.WARNING), torch.device("meta"):
        build_encoder(cfg, load_weights=False)
    assert "num_frames, q_strides, mask_unit_size differ" in caplog.text


# --------------------------------------------------------------------------------------------------- numbers
def _per_stage_timm(img_size, embed_dim, stages, schedule, mask_unit):
    """Reference: timm's Hiera with its (single) q_stride replaced per stage (unroll schedule, per-block pooling
    stride and window), the way the issue measured the VMAs costs."""
    from timm.models.hiera import Hiera, Unroll

    ref = Hiera(img_size=img_size, embed_dim=embed_dim, num_heads=1, stages=stages, q_stride=(1, 2, 2),
                mask_unit_size=mask_unit, patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
                sep_pos_embed=True, num_classes=0).eval()
    ref.unroll = Unroll(img_size, (2, 4, 4), [tuple(s) for s in schedule])
    window = math.prod(mask_unit)
    ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
    for k, end in enumerate(ends[:-1]):
        attn = ref.blocks[end + 1].attn
        attn.q_stride = math.prod(schedule[k])
        window //= attn.q_stride
        for blk in ref.blocks[end + 1: ends[k + 1] + 1]:
            blk.attn.window_size = window
    return ref


def test_debug_and_per_stage_models_match_timm_reference():
    torch.manual_seed(0)
    cases = [  # (ours, timm reference): the debug preset, a tiny-like model, the VMAs geometry (narrow, 4 frames)
        (hiera_debug(), _per_stage_timm((24, 32, 32), 16, (1, 1, 1, 1), [(1, 2, 2)] * 3, (1, 4, 4))),
        (VideoHiera(num_frames=8, image_size=64, embed_dim=16, stages=[1, 1, 2, 1],
                    q_strides=[[1, 4, 4], [1, 2, 2], [1, 2, 2]], mask_unit_size=[1, 8, 8]),
         _per_stage_timm((8, 64, 64), 16, (1, 1, 2, 1), [(1, 4, 4), (1, 2, 2), (1, 2, 2)], (1, 8, 8))),
        (on_meta(vmas_hiera_base, num_frames=4, embed_dim=8, stages=[1, 2, 1, 1]).to_empty(device="cpu"),
         _per_stage_timm((4, 224, 224), 8, (1, 2, 1, 1), [(1, 4, 4), (1, 7, 7), (1, 2, 2)], (1, 28, 28))),
    ]
    for ours, ref in cases:
        ours.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ours)[0])
        x = torch.randn(2, 3, *ours.input_size)
        with torch.no_grad():
            tokens, stages = ours.eval()(x, return_intermediates=True)
            feats = ref.forward_features(x)  # [B, N, C], raster order once every unroll is consumed
        last = stages[-1].reshape(2, -1, ours.out_dim)
        assert torch.allclose(last, feats, atol=1e-5)
        assert torch.allclose(tokens, ours.norm(stages[-1].mean((2, 3))))
        assert feats.abs().mean() > 0.1  # a real signal, not a vanishing one


@pytest.fixture(scope="module")
def timm_ckpt(tmp_path_factory):
    """A randomly initialised timm Hiera-B video (hiera_base_16x224 geometry, K400 head) saved in timm's format."""
    from timm.models.hiera import Hiera

    torch.manual_seed(1)
    ref = Hiera(img_size=(16, 224, 224), num_classes=400, **STOCK_TIMM)
    path = tmp_path_factory.mktemp("hiera") / "timm_hiera_base_16x224.pth"
    torch.save(ref.state_dict(), path)
    return path, ref.state_dict()


def test_load_timm_checkpoint_into_vmas_encoder(timm_ckpt, caplog):
    path, sd = timm_ckpt
    model = on_meta(vmas_hiera_base).to_empty(device="cpu")
    with caplog.at_level(logging.INFO):
        report = load_hiera_weights(model, path)
    assert set(report.skipped) == {"head.fc.weight", "head.fc.bias"}
    assert "classifier head" in caplog.text and "pos_embed_temporal 8 -> 48" in caplog.text
    assert report.missing == []
    own = model.state_dict()
    for key in ("blocks.2.attn.qkv.weight", "blocks.23.mlp.fc2.bias", "patch_embed.proj.weight", "pos_embed_spatial"):
        assert torch.equal(own[key], sd[key])
    assert torch.equal(own["norm.weight"], sd["head.norm.weight"])
    # linear interpolation 8 -> 48 with half-pixel centres: new row j samples source position (j + 0.5) / 6 - 0.5
    src, new = sd["pos_embed_temporal"][0], own["pos_embed_temporal"][0]
    for j in (0, 2, 3, 20, 47):
        pos = min(max((j + 0.5) / 6 - 0.5, 0.0), 7.0)
        lo = int(pos)
        hi, frac = min(lo + 1, 7), pos - lo
        assert torch.allclose(new[j], (1 - frac) * src[lo] + frac * src[hi], atol=1e-6)


def test_timm_checkpoint_loads_stock_exactly_and_matches_timm_forward(timm_ckpt):
    """Stock configuration: every tensor loads unchanged; at a small input both implementations agree to 1e-5."""
    from timm.models.hiera import Hiera

    _, sd = timm_ckpt  # the file itself is read in the test above; the mapping is the same function
    stock = on_meta(hiera_base_16x224).to_empty(device="cpu")
    mapped, report = checkpoint_filter_fn(sd, stock)
    assert len(report.loaded) == len(sd) - 2 and not report.resized and not report.missing
    assert all(torch.equal(v, sd[k.replace("norm.", "head.norm.") if k.startswith("norm.") else k])
               for k, v in mapped.items())

    small = on_meta(hiera_base_16x224, num_frames=4, image_size=64).to_empty(device="cpu")
    mapped, report = checkpoint_filter_fn(sd, small)  # pos tables resized 8 -> 2 and 56² -> 16²
    assert set(report.resized) == {"pos_embed_temporal", "pos_embed_spatial"}
    small.load_state_dict(mapped)
    ref = Hiera(img_size=(4, 64, 64), num_classes=400, device="meta", **STOCK_TIMM).to_empty(device="cpu")
    back = {("head." + k if k.startswith("norm.") else k): v for k, v in small.state_dict().items()}
    ref.load_state_dict({**back, "head.fc.weight": sd["head.fc.weight"], "head.fc.bias": sd["head.fc.bias"]})
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        tokens, stages = small.eval()(x, return_intermediates=True)
        feats, ref_stages = ref.eval().forward_features(x, return_intermediates=True)
        pooled = ref.forward_head(feats, pre_logits=True)  # timm: mean over all tokens, then head.norm
    for ours_s, ref_s in zip(stages, ref_stages):
        assert torch.allclose(ours_s, ref_s, atol=1e-5)
    assert torch.allclose(small.norm(stages[-1].mean((1, 2, 3))), pooled, atol=1e-5)


@pytest.mark.slow  # importing the hiera package (huggingface_hub mixin) alone takes ~10 s on a busy 2-core box
def test_original_hiera_format_and_parity(tmp_path, monkeypatch):
    """facebookresearch/hiera (hiera-transformer) checkpoint: ``{"model_state": ...}``, ``norm``, ``head.projection``."""
    import hiera as fb

    monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda t, *a, **k: t)  # skip the slow init, values set below
    ref = materialise(fb.Hiera(input_size=(4, 64, 64), num_classes=400, **STOCK_TIMM), seed=3)
    torch.save({"model_state": ref.state_dict(), "epoch": 100}, tmp_path / "hiera_base_16x224.pth")
    ours = on_meta(hiera_base_16x224, num_frames=4, image_size=64).to_empty(device="cpu").eval()
    report = load_hiera_weights(ours, tmp_path / "hiera_base_16x224.pth")
    assert sorted(report.skipped) == ["head.projection.bias", "head.projection.weight"] and not report.missing
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        logits, ref_stages = ref(x, return_intermediates=True)
        tokens, stages = ours(x, return_intermediates=True)
        ours_logits = ref.head(ours.norm(stages[-1].mean((1, 2, 3))))
    for ours_s, ref_s in zip(stages, ref_stages):
        assert torch.allclose(ours_s, ref_s, atol=1e-5)
    assert torch.allclose(ours_logits, logits, atol=1e-5)


@pytest.mark.parametrize("norm_key", ["norm.", "encoder_norm.", "head.norm."])
def test_upstream_key_names_map_onto_ours(tmp_path, norm_key):
    """Original (``norm``), MAE (``encoder_norm`` + decoder) and timm (``head.norm``) names, DDP ``module.`` prefix."""
    model = materialise(on_meta(hiera_debug))
    sd = {"module." + (norm_key + k[5:] if k.startswith("norm.") else k): v.clone()
          for k, v in model.state_dict().items()}
    sd.update({"module.decoder_embed.weight": torch.zeros(4, 4), "module.mask_token": torch.zeros(1, 1, 4),
               "module.head.projection.weight": torch.zeros(400, 128)})
    other = materialise(on_meta(hiera_debug), seed=7)
    report = load_hiera_weights(other, _save(tmp_path, {"model_state": sd, "epoch": 3}))
    assert set(report.skipped) == {"decoder_embed.weight", "mask_token", "head.projection.weight"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())


def _save(tmp_path, obj):
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    return path


def test_checkpoint_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = hiera_debug()
    with pytest.raises(CheckpointError, match=r"download https://dl\.fbaipublicfiles\.com/hiera/hiera_base_16x224\.pth"):
        load_hiera_weights(model, "hiera_base_16x224.mae_k400_ft_k400")
    with pytest.raises(CheckpointError, match="neither a file nor a known name"):
        load_hiera_weights(model, tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable Hiera state dict"):
        load_hiera_weights(model, tmp_path / "bad.pth")
    base_like = {"blocks.0.attn.qkv.weight": torch.zeros(288, 96), "patch_embed.proj.weight": torch.zeros(96, 3, 3, 7, 7)}
    with pytest.raises(CheckpointError, match="pick the model.encoder.arch"):
        load_hiera_weights(model, _save(tmp_path, base_like))


# --------------------------------------------------------------------------------------------------- training
def test_grad_checkpointing_same_output_and_grads():
    model = hiera_debug(drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 24, 32, 32)
    results = []
    for flag in (False, True):
        model.set_grad_checkpointing(flag)
        model.zero_grad()
        out = model(x)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = results
    assert torch.allclose(o1, o2, atol=1e-6)
    assert g1.keys() == g2.keys() and all(torch.allclose(g1[k], g2[k], atol=1e-6) for k in g1)
    assert g1["pos_embed_temporal"].abs().sum() > 0
