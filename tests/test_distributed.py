"""DeepSpeed on 2 CPU ranks (gloo) against 1 rank (issue 19): every ZeRO stage, bf16, sharded validation, and the
ZeRO-3 train -> --resume -> export -> ``vmas generate`` path through ``train.sh``.

Tolerances (``tools/check_zero.py``, docs/training.md): fp32 5e-5 nats (summation order only; measured <= 1e-6),
bf16 1 % of the loss (8-bit mantissa, 0.39 % per rounding; measured 0.21 % vs fp32), validation of the initial
weights 1e-5 (same batches on both layouts, float64 sums).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
# every stage in fp32; bf16 through each DeepSpeed optimiser path (stage 0: BF16_Optimizer, 1-2: ZeRO, 3: ZeRO-3)
RUNS = "z0_fp32,z1_fp32,z2_fp32,z3_fp32,z0_bf16,z2_bf16,z3_bf16"


def _tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env(port: int, nproc: int) -> dict:
    return {**os.environ, "NPROC": str(nproc), "MASTER_PORT": str(port), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def _run(cmd, env, timeout=900) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    from test_data_resume import _write_shards

    from vmas.config import load_config

    root = tmp_path_factory.mktemp("val")
    _write_shards(root, [5, 2], load_config(DEBUG))  # 7 clips: batches of 2 -> 4 batches, the last one of 1 clip
    return f"{root}/train-{{000000..000001}}.tar"


@pytest.mark.deepspeed
@pytest.mark.slow
def test_every_zero_stage_and_bf16_two_ranks_match_one(tmp_path, val_shards):
    val = [f"data.val_shards={val_shards}", "train.eval_batch_size=2"]
    reports = {}
    for nproc, micro in ((1, 2), (2, 1)):  # same global batch 2
        out = tmp_path / f"w{nproc}.json"
        _run(["bash", "train.sh", str(DEBUG), f"data.batch_size={micro}", *val, "--runs", RUNS, "--steps", "3",
              "--out", str(out), "--work", str(tmp_path / f"w{nproc}")],
             {**_env(29700 + nproc + os.getpid() % 100, nproc), "ENTRY": "tools/check_zero.py"})
        reports[nproc] = json.loads(out.read_text())
    one, two = reports[1], reports[2]
    assert two["world_size"] == 2 and set(two["runs"]) == set(one["runs"]) == set(RUNS.split(","))
    check_zero = _tool("check_zero")
    compare = check_zero.compare
    assert compare(one, two) == []  # 2 ranks vs 1 per run, and every run vs ZeRO-0 fp32 of 1 rank
    assert compare(one, one) == []
    for name, run in two["runs"].items():
        assert run["weight_dtype"] == ("torch.bfloat16" if "bf16" in name else "torch.float32")
        ref = one["runs"][name]["val0"]
        assert run["val0"]["clips"] == 7 and run["val0"]["ce"] == pytest.approx(
            ref["ce"], abs=check_zero.val_tolerance(ref, "ce", "bf16" in name))
        assert Path(run["export"]).is_file()
    # bf16 really ran in bf16: its curve is close to fp32 but not equal
    fp32, bf16 = one["runs"]["z3_fp32"]["loss_curve"], one["runs"]["z3_bf16"]["loss_curve"]
    assert fp32 != bf16 and np.allclose(fp32, bf16, rtol=check_zero.BF16_TOL, atol=0)


def test_gain_tolerance_is_bounded_by_the_losses_not_the_difference():
    """The failure seen on a CPU without AVX-512 (issue 31): bf16 moved ``video_gain`` 0.004785 -> 0.004847 (1.3 %
    of the gain, 0.0008 % of the losses it is the difference of). A gain's bound is the sum of its two losses'
    bounds: that passes, a real change of the gain still fails, and fp32 stays at summation order."""
    check_zero = _tool("check_zero")
    val = {"clips": 7, "ce": 7.61, "ce_video": 7.62, "ce_wrong_video": 7.624785, "video_gain": 0.004785}

    def report(gain, ce_wrong, precision="bf16", clips=7):
        v = {**val, "video_gain": gain, "ce_wrong_video": ce_wrong, "clips": clips}
        return {"world_size": 2, "runs": {f"z0_{precision}": {"loss_curve": [7.6], "val0": v}}}

    ref = {"world_size": 1, "runs": {"z0_fp32": {"loss_curve": [7.6], "val0": val}}}
    assert check_zero.compare(ref, report(0.004847481, 7.624847)) == []
    # a gain that really moved (0.3 nats > 0.01 * (7.62 + 7.62)) is still caught, as is its loss
    bad = check_zero.compare(ref, report(0.304785, 7.924785))
    assert [m.split(" val ")[1].split(":")[0] for m in bad] == ["ce_wrong_video", "video_gain"]
    # fp32: identical weights and batches, so only the order of float64 sums: 1e-5 per loss, 2e-5 per gain
    assert check_zero.val_tolerance(val, "video_gain", bf16=False) == pytest.approx(2e-5)
    assert check_zero.val_tolerance(val, "video_gain", bf16=True) == pytest.approx(0.01 * (7.624785 + 7.62))
    assert check_zero.compare(ref, report(0.004785, 7.624785, "fp32", clips=6))  # a clip count is exact


@pytest.mark.deepspeed
@pytest.mark.slow
def test_zero3_two_ranks_resume_export_generate(tmp_path):
    """``NPROC=2 bash train.sh configs/debug.yaml data.batch_size=1 train.zero_stage=3``, then ``--resume`` from the
    step-2 checkpoint repeats steps 3-4 exactly, ``--export`` writes the inference file and ``vmas generate`` uses it."""
    out = tmp_path / "run"
    env = _env(29800 + os.getpid() % 100, 2)
    args = ["bash", "train.sh", str(DEBUG), "data.batch_size=1", "train.zero_stage=3", f"train.out_dir={out}",
            "train.progress=false", "model.lm.cond_dropout=0", "optim.max_steps=4", "train.save_every=2",
            "train.keep_last=3"]
    _run(args, env)
    full = json.loads((out / "summary.json").read_text())
    assert full["zero_stage"] == 3 and full["world_size"] == 2 and full["steps"] == 4
    step2 = out / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in step2.iterdir()) >= ["ema.pt", "engine", "meta.json", "rank_00000.pt",
                                                       "rank_00001.pt"]
    _run([*args, "--resume", str(step2)], env)
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["resumed_from_step"] == 2
    assert resumed["loss_curve"] == pytest.approx(full["loss_curve"], abs=1e-5)
    model = tmp_path / "model.pt"
    _run([sys.executable, "tools/train.py", str(DEBUG), "--export", str(out / "checkpoints" / "step_00000004"),
          "--out", str(model)], env)
    from test_generate import _video

    video = _video(tmp_path / "clip.mp4", 1.5)
    _run([sys.executable, "-m", "vmas", "generate", str(video), "-o", str(tmp_path / "gen"), "--model", str(model),
          "--top-k", "16", "-q"], env)
    assert (tmp_path / "gen" / "clip.mp4").stat().st_size > 0
