"""tools/synthmv_benchmark.py end to end at debug size (issue 17): irregular SynthMV clips -> shards -> two
variants x two training seeds -> scores with spreads over training seeds; a second call reuses every finished
run and cached score instead of training or generating again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
# synthmv_tiny with a random codec (no trained SynthMV codec in a test) and a few tiny steps
OVERRIDES = ["model.codec.pretrained=''", "data.batch_size=2", "data.shuffle_buffer=2", "data.clips_per_shard=4",
             "train.eval_every=0", "train.save_every=100", "optim.warmup_steps=0", "model.lm.beat_condition=false",
             "model.lm.motion_condition=true"]


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([PY, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_benchmark_trains_seeds_scores_spreads_and_reuses_runs(tmp_path):
    data = tmp_path / "smv"
    for split, seed, num in (("train", 0, 6), ("test", 1, 3)):
        run("-m", "datasets.synthmv", "--out", str(data / split), "--num", str(num), "--seed", str(seed), "--size",
            "32", "--seconds", "5", "--workers", "1", "--split", split, "--rhythm", "irregular", "--window", "5")
    shards = tmp_path / "shards"
    run("tools/preprocess.py", "--manifest", str(data / "train" / "vmas_manifest.jsonl"), "--out", str(shards),
        "--config", "configs/synthmv_tiny.yaml", "--splits", "train", "--workers", "1", *OVERRIDES)
    out = tmp_path / "bench"
    args = ["tools/synthmv_benchmark.py", "--json", "--config", "configs/synthmv_tiny.yaml", "--steps", "2",
            "--variants", "ar_only,full", "--train-seeds", "0,1", "--jobs", "2", "--clips", "2",
            "--sample-seeds", "2", "--test-manifest", str(data / "test" / "vmas_manifest.jsonl"), "--out", str(out),
            *OVERRIDES, f"data.train_shards={shards}/train-*.tar"]
    res = json.loads(run(*args).stdout)
    assert res["meta"]["training_seeds"] == [0, 1] and res["meta"]["commit"]
    for row in ("ar_only", "full", "random", "codec_ceiling"):
        for metric in ("mv_align", "onset_f1", "class_acc"):
            assert set(res[row][metric]) >= {"mean", "std"}, (row, metric)
    full = res["full"]["onset_f1"]
    runs = full["runs"]  # per training seed: the mean over its sampling seeds
    assert len(runs) == 2
    assert full["mean"] == pytest.approx(sum(runs) / 2, abs=1e-4)
    assert full["std"] == pytest.approx(abs(runs[0] - runs[1]) / 2, abs=1e-4)  # population std of two values
    models = sorted(out.glob("*/seed*/model.pt"))
    assert len(models) == 4
    mtimes = [m.stat().st_mtime for m in models]
    assert all(list(m.parent.glob("scores_*.json")) for m in models)

    again = json.loads(run(*args).stdout)  # nothing is trained or generated again: same numbers, same models
    assert [m.stat().st_mtime for m in models] == mtimes
    for row in ("ar_only", "full"):
        assert again[row]["onset_f1"] == res[row]["onset_f1"]
