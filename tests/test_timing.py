"""Issue 17 plumbing: the per-step video paths and the onset oracle reach the LM during training and generation."""
from __future__ import annotations

from pathlib import Path

import torch

from vmas.config import load_config
from vmas.solvers.solver import Solver

ROOT = Path(__file__).resolve().parent.parent


def two_step_cfg(tmp_path, *overrides):
    """Debug preset, torch engine, 2 steps, no condition dropout (every clip feeds its per-step paths)."""
    return load_config(ROOT / "configs" / "debug.yaml", [
        f"train.out_dir={tmp_path}", "train.engine=torch", "train.progress=false", "optim.max_steps=2",
        "train.save_every=100", "optim.warmup_steps=0", "model.lm.cond_dropout=0", *overrides])


def test_onset_oracle_and_interp_path_are_trained(tmp_path):
    cfg = two_step_cfg(tmp_path, "model.lm.onset_oracle=true", "model.lm.video_fuse=cross+interp")
    solver = Solver(cfg)
    fuser = solver.model.fuser
    before = {"onset": fuser.onset_proj.weight.detach().clone(), "step": fuser.step_proj.weight.detach().clone()}
    assert fuser.step_interp
    solver.fit()
    # both per-step paths got gradients: the music's onsets (from the batch) and the blended video tokens
    assert not torch.equal(fuser.onset_proj.weight, before["onset"])
    assert not torch.equal(fuser.step_proj.weight, before["step"])


def test_generation_with_oracle_onsets_depends_on_them():
    from vmas.builders import build_model

    cfg = load_config(ROOT / "configs" / "debug.yaml", ["model.lm.onset_oracle=true"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    with torch.no_grad():
        # a strong onset vector (not constant: the LM's LayerNorm would remove a constant shift)
        model.fuser.onset_proj.weight.copy_(3.0 * torch.randn_like(model.fuser.onset_proj.weight))
    frames = torch.randint(0, 256, (1, cfg.data.num_frames, cfg.data.image_size, cfg.data.image_size, 3),
                           dtype=torch.uint8)
    onsets = torch.zeros(1, 20)
    onsets[0, ::3] = 1.0

    def sample(o):
        return model.generate(frames, num_frames=12, cfg=1.0, top_k=5, generator=torch.Generator().manual_seed(0),
                              onsets=o)

    assert torch.equal(sample(onsets), sample(onsets))
    assert not torch.equal(sample(onsets), sample(None))


def test_motion_features_hand_values():
    from vmas.modules.conditioning import MOTION_OFFSETS, motion_features

    # 4 frame pairs at 2 fps: pair i sits at (i + 0.5) / 2 s = 0.25, 0.75, 1.25, 1.75 s; normalised by the max (4)
    motion = torch.tensor([[0.0, 4.0, 2.0, 0.0]])
    f = motion_features(motion, fps=2.0, frame_rate=10.0, num_steps=21)  # steps every 0.1 s
    k = MOTION_OFFSETS.index(0.0)
    assert f.shape == (1, 21, len(MOTION_OFFSETS))
    torch.testing.assert_close(f[0, 5, k], torch.tensor(0.5))  # t = 0.5 s: halfway from 0 (0.25 s) to 1 (0.75 s)
    torch.testing.assert_close(f[0, 10, k], torch.tensor(0.75))  # t = 1.0 s: halfway from 1 to 0.5
    assert f[0, 1, k] == 0  # t = 0.1 s: before the first pair's time, outside the curve
    j = MOTION_OFFSETS.index(0.06)  # the look-ahead column samples 60 ms later
    torch.testing.assert_close(f[0, 5, j], torch.tensor((0.56 - 0.25) / 0.5))
    torch.testing.assert_close(motion_features(3 * motion, 2.0, 10.0, 21), f)  # scale-free


def test_motion_condition_trains_and_generation_computes_motion_from_frames(tmp_path):
    from vmas.builders import build_model

    cfg = two_step_cfg(tmp_path, "model.lm.motion_condition=true", "loss.motion_flow=farneback")
    solver = Solver(cfg)
    w0 = solver.model.fuser.motion_proj.weight.detach().clone()
    solver.fit()
    assert not torch.equal(solver.model.fuser.motion_proj.weight, w0)  # the shards' curves reached the LM

    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    with torch.no_grad():
        model.fuser.motion_proj.weight.copy_(5.0 * torch.randn_like(model.fuser.motion_proj.weight))
    T, H = cfg.data.num_frames, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    texture = torch.nn.functional.avg_pool2d(torch.rand(1, 1, H + 8, H + 8, generator=g), 5, 1)[0, 0] * 255
    moving = texture[None, None, :H, :H, None].expand(1, T, H, H, 3).to(torch.uint8).clone()
    moving[0, T // 2:] = texture[3: H + 3, :H, None].to(torch.uint8)  # the picture shifts by 3 px half way
    m = model.video_motion(moving)
    assert m.shape == (1, T - 1) and int(m[0].argmax()) == T // 2 - 1 and m[0].max() > 1.0

    n = round((T / cfg.data.fps) * cfg.data.frame_rate)  # the whole window, so both curves' peaks fall inside

    def sample(frames, **kw):
        return model.generate(frames, num_frames=n, cfg=1.0, top_k=5, generator=torch.Generator().manual_seed(0),
                              **kw)

    # generation computes the curve itself (same as passing it) and the curve changes the music
    torch.testing.assert_close(sample(moving), sample(moving, motion=m))
    assert not torch.equal(sample(moving, motion=m), sample(moving, motion=m.roll(-(T // 4), dims=1)))
