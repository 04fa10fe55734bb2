"""Issue 17 plumbing: the per-step video paths and the onset oracle reach the LM during training and generation."""
from __future__ import annotations

from pathlib import Path

import torch

from vmas.config import load_config
from vmas.solvers.solver import Solver

ROOT = Path(__file__).resolve().parent.parent


def test_onset_oracle_and_interp_path_are_trained(tmp_path):
    cfg = load_config(ROOT / "configs" / "debug.yaml", [
        f"train.out_dir={tmp_path}", "train.engine=torch", "train.progress=false", "optim.max_steps=2",
        "train.save_every=100", "optim.warmup_steps=0", "model.lm.cond_dropout=0", "model.lm.onset_oracle=true",
        "model.lm.video_fuse=cross+interp"])
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
