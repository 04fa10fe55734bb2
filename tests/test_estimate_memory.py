"""Training memory you can trust (issue 19): ``tools/estimate_memory.py --train`` (``vmas.solvers.memory``) against
one real training step measured on the CPU allocator, component by component, at two sizes, with and without
activation checkpointing; the measurement and the backward walk against hand computations."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmas.config import load_config
from vmas.solvers.memory import ForwardTrace, backward_peak, estimate_training, measure_training, trace_allocations

ROOT = Path(__file__).resolve().parent.parent
# condition dropout / video swaps off: the estimate traces the path where nothing is dropped (dropping swaps slots
# for null tokens of the same size but adds a few small temporaries), so the measured step takes the same path
SAME_PATH = ["model.lm.cond_dropout=0.0", "model.lm.tag_dropout=0.0", "model.lm.video_swap_prob=0.0",
             "model.lm.beat_dropout=0.0", "train.engine=torch", "train.precision=fp32"]
COMPONENTS = ("params", "grads", "optimizer", "activations", "peak")


def test_allocation_trace_counts_live_bytes_by_hand():
    """Live bytes and peak of a hand-written allocation sequence (float32 = 4 bytes per value)."""
    from torch.profiler import record_function

    def run():
        a = torch.empty(1000)  # +4000
        with record_function("vmas_mem/forward"):
            b = torch.empty(2000)  # +8000 -> 12000
            c = a.clone()  # +4000 -> 16000 (peak)
            del a, c  # -8000 -> 8000
        d = torch.empty(500)  # +2000 -> 10000
        del b, d

    trace = trace_allocations(run)
    t0, t1 = trace.span("vmas_mem/forward")
    assert trace.at(t0) == 4000 and trace.at(t1) == 8000
    assert trace.peak(t0, t1) == 16000
    assert int(trace.live[-1]) == 0


def test_backward_peak_by_hand():
    """Forward: saved 100, weight A first used (gradient 10), block X = [saved 40, weight B (gradient 5)], saved 30.

    Backward walks the events from the end; at event i it holds what was saved up to i, the gradients from i on,
    and (recompute) X's 60 non-checkpointed bytes while inside X:
    i=4: 170 + 0 | i=3: 140 + 5 (+60) | i=2: 140 + 5 (+60) | i=1: 100 + 15 | i=0: 100 + 15.
    Plus the gradient in flight, the largest saved tensor (100)."""
    events = [("saved", 100), ("grad", 10), ("saved", 40), ("grad", 5), ("saved", 30)]
    trace = ForwardTrace(events, {"X": (2, 4)}, {"X": 60})
    assert backward_peak(trace, recompute=False) == 170 + 100
    assert backward_peak(trace, recompute=True) == 205 + 100


@pytest.mark.parametrize("preset,batch", [("debug", 2), ("synthmv_tiny", 2)])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_matches_measured_step(preset, batch, checkpointing):
    """Every component of the estimate within 20 % of the allocator's measurement of a real step: the debug preset
    (LM 32 x 2 layers, 24 frames) and the SynthMV preset (LM 128 x 4, 48 frames, tag branch), micro-batch 2."""
    cfg = _config(preset, checkpointing)
    est = estimate_training(cfg, batch)
    meas = _measured(preset, checkpointing, batch)
    ratios = {k: est[k] / meas[k] for k in COMPONENTS}
    assert all(0.8 <= r <= 1.2 for r in ratios.values()), (preset, checkpointing, ratios, meas)
    assert est["meta"]["grad_checkpointing"] == checkpointing
    # the measurement itself is meaningful: AdamW keeps two fp32 moments per trainable weight (+ 4-byte counters)
    assert meas["optimizer"] == pytest.approx(2 * meas["grads"], rel=1e-3)
    if checkpointing:  # checkpointing must shrink what the forward keeps (measured, not only estimated)
        plain = _measured(preset, False, batch)
        assert meas["activations"] < 0.5 * plain["activations"]


def test_tool_train_measure_json(tmp_path):
    """``tools/estimate_memory.py --train --measure`` at debug size prints the estimate, the measurement and their
    ratio; paper-size options (ZeRO stage, world size, bf16) divide what ZeRO partitions."""
    cmd = [sys.executable, str(ROOT / "tools" / "estimate_memory.py"), "--train", "--measure", "--json",
           "--config", str(ROOT / "configs" / "debug.yaml"), *SAME_PATH]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(report["ratio"]) == set(COMPONENTS) and all(0.8 <= r <= 1.2 for r in report["ratio"].values())
    cfg = load_config(ROOT / "configs" / "debug.yaml", SAME_PATH)
    one = estimate_training(cfg, 2, world_size=1, zero_stage=0, precision="bf16")
    four = estimate_training(cfg, 2, world_size=4, zero_stage=3, precision="bf16")
    n = one["meta"]["trainable_count"]
    assert one["optimizer"] == 16 * n + 4 * len([p for p in _params(cfg) if p.requires_grad])  # m, v, master, grad
    assert four["optimizer"] == one["optimizer"] // 4 and four["grads"] == one["grads"] // 4
    assert four["params"] == one["params"] // 4 and one["grads"] == 2 * n


def test_measurement_refuses_bf16_in_one_line(capsys):
    from tools.estimate_memory import main
    from vmas.errors import ConfigError

    with pytest.raises(ConfigError, match="pass train.precision=fp32"):
        measure_training(load_config(ROOT / "configs" / "debug.yaml", ["train.precision=bf16"]))
    assert main(["--train", "--measure", "--config", str(ROOT / "configs" / "debug.yaml"), "train.precision=bf16"]) == 2
    assert capsys.readouterr().err.startswith("error: memory measurement runs fp32")


def _config(preset: str, checkpointing: bool):
    flag = str(checkpointing).lower()
    return load_config(ROOT / "configs" / f"{preset}.yaml",
                       SAME_PATH + [f"model.lm.grad_checkpointing={flag}", f"model.encoder.grad_checkpointing={flag}"])


@functools.lru_cache(maxsize=None)
def _measured(preset: str, checkpointing: bool, batch: int):
    return measure_training(_config(preset, checkpointing), batch)


def _params(cfg):
    from vmas.builders import build_model

    with torch.device("meta"):
        return list(build_model(cfg, load_weights=False).parameters())
