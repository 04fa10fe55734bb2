"""Reproducible budgets and traceable results (issue 36, defect 4): codecs are trained to a step count, every
result JSON names the codec's steps and weight hash, and published results come from a committed tree."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vmas.experiments.provenance import codec_record, git_state, provenance, refuse_dirty, weights_sha256

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.codec.n_filters=2", "model.codec.lstm=0", "model.codec.bins=16", "data.batch_size=2",
        "data.clip_seconds=0.2", "optim.warmup_steps=1", "train.log_every=100"]


def _train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train_codec.py"), "--config",
                           str(ROOT / "configs" / "codec_synthmv.yaml"), "--synthetic", "4", "--eval-clips", "1",
                           "--out", str(tmp_path / "codec.pt"), *extra, *TINY], capture_output=True, text=True)


def test_codec_budget_is_steps_and_the_result_records_steps_and_weights(tmp_path):
    proc = _train(tmp_path, "--steps", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = codec_record(tmp_path / "codec.pt")
    assert rec["steps"] == 3 and rec["budget"] == "steps" and "warning" not in proc.stderr
    pkg = torch.load(tmp_path / "codec.pt", weights_only=True)
    assert rec["weights_sha256"] == weights_sha256(pkg["state_dict"])
    # the hash is of the weights, not of the file: the same weights saved with other metrics hash the same ...
    torch.save({**pkg, "metrics": {"steps": 3, "seconds": 99.0}}, tmp_path / "resaved.pt")
    assert codec_record(tmp_path / "resaved.pt")["weights_sha256"] == rec["weights_sha256"]
    # ... and one weight moved by one float32 ulp does not
    sd = {k: v.clone() for k, v in pkg["state_dict"].items()}
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.numel())
    sd[name].view(-1)[0] = torch.nextafter(sd[name].view(-1)[0], torch.tensor(np.inf))
    torch.save({**pkg, "state_dict": sd}, tmp_path / "moved.pt")
    assert codec_record(tmp_path / "moved.pt")["weights_sha256"] != rec["weights_sha256"]
    meta = provenance({"codec": tmp_path / "codec.pt", "other": tmp_path / "absent.pt"})
    assert meta["codec"] == rec and meta["other"]["missing"] is True


def test_codec_lr_decays_over_the_step_budget_or_stays_constant(tmp_path):
    """The codec trainer uses the project's schedule over its own budget: warm-up 1, budget 3 -> updates at factors
    1, 1 (cosine start) and 0.5 (half-way down the cosine). ``min_lr_ratio: 1.0`` (codec_synthmv.yaml, how the
    shipped SynthMV codec was trained) keeps 3e-3; the irregular and real-music codecs' presets decay."""
    assert _train(tmp_path, "--steps", "3").returncode == 0
    assert torch.load(tmp_path / "codec.pt", weights_only=True)["metrics"]["lr_last"] == 3e-3
    for preset in ("codec_synthmv_irregular.yaml", "codec_realmusic.yaml"):
        out = tmp_path / f"decayed_{preset}.pt"
        decayed = subprocess.run([sys.executable, str(ROOT / "tools" / "train_codec.py"), "--config",
                                  str(ROOT / "configs" / preset), "--synthetic", "4", "--eval-clips", "1",
                                  "--out", str(out), "--steps", "3", *TINY], capture_output=True, text=True)
        assert decayed.returncode == 0, decayed.stderr[-2000:]
        assert torch.load(out, weights_only=True)["metrics"]["lr_last"] == pytest.approx(1.5e-3, rel=1e-12), preset


def test_a_wall_clock_cap_is_recorded_and_warned_about(tmp_path):
    proc = _train(tmp_path, "--steps", "1000", "--minutes", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = codec_record(tmp_path / "codec.pt")
    assert rec["steps"] == 0 and rec["budget"] == "minutes"
    assert "depends on the machine's load" in proc.stderr


def test_no_published_budget_is_a_wall_clock():
    """The Makefile trains every codec behind a published number to a step count."""
    make = (ROOT / "Makefile").read_text()
    lines = [line for line in make.splitlines() if "train_codec.py" in line]
    assert lines and all("--steps" in line and "--minutes" not in line for line in lines)


def test_dirty_tree_is_detected_and_refused(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("1")
    (repo / "docs" / "results").mkdir(parents=True)
    (repo / "docs" / "results" / "r.json").write_text("{}")
    subprocess.run([*git, "-C", str(repo), "add", "a.txt", "docs"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "-m", "a"], check=True)
    commit, dirty = git_state(repo)
    assert len(commit) == 40 and dirty is False and refuse_dirty(provenance(root=repo), allow=False) is None
    (repo / "docs" / "results" / "r.json").write_text('{"x": 1}')  # a benchmark chain rewriting a published result
    assert git_state(repo) == (commit, False)
    (repo / "a.txt").write_text("2")
    meta = provenance(root=repo)
    assert meta["dirty_tree"] is True and meta["commit"] == commit
    assert "commit first" in refuse_dirty(meta, allow=False) and refuse_dirty(meta, allow=True) is None
    assert git_state(tmp_path / "not_a_repo") == ("unknown", False)


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "results").glob("*.json")), ids=lambda p: p.name)
def test_published_results_come_from_a_committed_tree(path):
    meta = json.loads(path.read_text()).get("meta") or {}
    assert meta.get("dirty_tree") is not True, f"{path.name}: re-run it from a committed tree"
