"""Issue 36: ``tools/train.py --export CKPT_DIR --out FILE`` (docs/training.md) runs without a preset.

A training checkpoint carries its config (``meta.json``), so the preset is optional with ``--export``; it used to
fail with ``the following arguments are required: config, overrides``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmas.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vmas.solvers.solver import Solver

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(DEBUG, [f"train.out_dir={out}", "train.engine=torch", "train.progress=false",
                              "optim.max_steps=2", "train.save_every=2", "model.lm.dim=16", "model.lm.ffn_dim=32"])
    Solver(cfg).fit()
    return out, out / "checkpoints" / "step_00000002"


def test_export_without_a_preset_uses_the_checkpoints_config(checkpoint, tmp_path):
    out, ckpt = checkpoint
    target = tmp_path / "vmas.pt"
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--export", str(ckpt), "--out",
                          str(target)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == f"exported {target}"
    blob = torch.load(target, weights_only=True)
    assert blob["config"]["model"]["lm"]["dim"] == 16  # the run's own model section, not debug.yaml's 32
    assert blob["meta"]["step"] == 2
    ema = torch.load(ckpt / "ema.pt", weights_only=True)["shadow"]
    key = next(k for k in blob["model"] if k.startswith("lm."))
    torch.testing.assert_close(blob["model"][key], ema.get(key, ema.get(f"model.{key}")), rtol=0, atol=0)


def test_export_overrides_without_a_preset_and_default_out(checkpoint, tmp_path):
    from vmas.solvers.cli import main, parse_args

    _, ckpt = checkpoint
    args = parse_args(["--export", str(ckpt), f"train.out_dir={tmp_path}"])
    assert args.config is None and args.overrides == [f"train.out_dir={tmp_path}"]
    assert main(["--export", str(ckpt), f"train.out_dir={tmp_path}"]) == 0
    assert (tmp_path / "model.pt").is_file()  # default --out: <train.out_dir>/model.pt


def test_training_still_needs_a_preset(capsys):
    from vmas.solvers.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["optim.max_steps=3"])
    assert "config" in capsys.readouterr().err
