"""tools/gpu_check.py (issue 31 §4) at debug size on the CPU: the same keys a GPU run writes, and numbers that
follow from each other; the FLOP count and the peak table checked by hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmas.experiments import device_check

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_debug_size_check_on_the_cpu_writes_every_key(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run("--config", "configs/debug.yaml", "--out", str(out), "--steps", "2", "--decoders", "cached,static",
                "train.engine=torch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    t, g, meta = r["train"], r["generate"], r["meta"]
    # the debug preset: micro-batch 2 x 4 codebooks x 125 frames (2.5 s at 50 Hz)
    assert t["micro_batch"] == 2 and t["audio_tokens_per_s"] * t["step_s"] == pytest.approx(2 * 4 * 125)
    assert t["model_tflops_per_s"] == pytest.approx(3 * t["forward_gflops"] / t["step_s"] / 1e3)
    assert t["mfu"] is None and t["peak_memory_gib"] is None and t["estimated_memory_gib"] > 0  # no GPU counters
    assert g["num_frames"] == 125 and g["encoder"]["frames"] == 24 and g["codec"]["samples"] == 125 * 640
    for name, d in g["decoders"].items():
        if "skipped" not in d:  # 125 frames + 3 delay steps
            assert d["steps"] == 128 and d["steps_per_s"] * d["window_s_wall"] == pytest.approx(128), name
    assert sorted(g["decoders"]) == ["cached", "static"] and "skipped" not in g["decoders"]["cached"]
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__ and len(meta["commit"]) in (40, 7)


def test_paper_preset_on_a_cpu_is_refused_in_one_line(tmp_path):
    proc = _run("--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "configs/debug.yaml" in proc.stderr


def test_forward_flops_and_peaks_by_hand():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16)
    assert device_check.forward_flops(lambda: lin(x)) == 2 * 5 * 16 * 8  # one multiply-add = 2 FLOPs
    assert device_check.bf16_peak(torch.device("cpu")) is None
    names = dict(device_check.BF16_PEAK)
    assert names["H100 PCIe"] < names["H100"]  # the PCIe card is matched before the generic H100 entry
    assert [k for k, _ in device_check.BF16_PEAK].index("H100 PCIe") < [k for k, _ in
                                                                         device_check.BF16_PEAK].index("H100")
