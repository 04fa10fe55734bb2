"""The paper preset carries the motion condition (issue 32 §3), the paper's own design stays one override away, and
the memory estimate and the training step include the motion path."""
from __future__ import annotations

from pathlib import Path

import torch

from vmas.config import load_config
from vmas.modules.conditioning import MOTION_OFFSETS
from vmas.solvers.memory import estimate_training, synthetic_inputs, training_objects

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_paper_preset_has_the_motion_condition_and_the_estimate_counts_it():
    paper = load_config(CONFIGS / "paper.yaml")
    assert paper.model.lm.motion_condition is True
    plain = load_config(CONFIGS / "paper.yaml", ["model.lm.motion_condition=false"])  # the paper's design
    on, off = estimate_training(paper, 4, world_size=32), estimate_training(plain, 4, world_size=32)
    # exactly the motion projection: one bias-free weight per motion offset per model dimension
    assert on["meta"]["params_count"] - off["meta"]["params_count"] == len(MOTION_OFFSETS) * paper.model.lm.dim


def test_a_motion_conditioned_training_step_uses_the_curve():
    cfg = load_config(CONFIGS / "debug.yaml", ["model.lm.motion_condition=true", "model.lm.cond_dropout=0"])
    torch.manual_seed(0)
    from vmas.builders import build_codec

    step, opt = training_objects(cfg, build_codec(cfg.model.codec, load_weights=False))
    inputs = synthetic_inputs(cfg, 2)
    assert inputs["motion"].shape == (2, cfg.data.num_frames - 1)  # [B, T-1], from the frames as preprocessing does
    step.eval()  # no dropout: the only difference between the two calls is the curve
    with torch.no_grad():
        a, _ = step(**inputs)
        b, _ = step(**{**inputs, "motion": inputs["motion"].flip(-1)})
    assert not torch.allclose(a, b)  # the loss depends on the motion curve
    total, _ = step.train()(**inputs)
    total.backward()
    grad = step.model.fuser.motion_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # and the projection learns from it
