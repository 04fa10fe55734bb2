"""Issue 36, "look for others of the same kind": settings that looked applied and did nothing now say so.

- ``train.early_stop`` without validation (``train.eval_every`` = 0 or no ``data.val_shards``) could never stop a
  run (``configs/finetune.yaml`` sets ``early_stop: 4``): refused in one line.
- ``data.val_shards`` with ``train.eval_every: 0`` (``configs/paper.yaml`` does this), ``eval_every`` without val
  shards, ``data.unpaired_fraction`` on synthetic batches: one warning line each at start-up.
- Training overrides of ``data.curation.*`` / ``data.preprocess.*`` (read only by curation / preprocessing), and
  curation overrides outside ``data.*``: a warning line naming who reads them.
- ``train.sh``: ``NPROC`` on a GPU machine, ``GPUS_PER_NODE`` / ``HOSTFILE`` / ``NODE_RANK`` without a GPU.
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch

from vmas.config import load_config
from vmas.errors import ConfigError
from vmas.solvers.checks import check_config, config_warnings, unread_overrides

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


def test_early_stop_without_validation_is_refused(tmp_path):
    shards = tmp_path / "val-000000.tar"
    shards.write_bytes(b"")
    ok = load_config(DEBUG, ["train.early_stop=2", "train.eval_every=1", f"data.val_shards={shards}"])
    check_config(ok, 1)
    for overrides in (["train.early_stop=2"], ["train.early_stop=2", "train.eval_every=5"],
                      ["train.early_stop=2", f"data.val_shards={shards}"]):
        with pytest.raises(ConfigError) as err:
            check_config(load_config(DEBUG, overrides), 1)
        assert "train.early_stop=2 can never stop the run" in str(err.value) and "\n" not in str(err.value)
    # the fine-tuning preset without the docs' data.val_shards: early_stop 4 would silently never trigger
    with pytest.raises(ConfigError, match="train.early_stop=4"):
        check_config(load_config(ROOT / "configs" / "finetune.yaml", [f"data.train_shards={shards}"]), 1)


def test_start_up_warnings_name_the_unused_setting():
    assert config_warnings(load_config(DEBUG)) == []
    (line,) = config_warnings(load_config(DEBUG, ["data.val_shards=v-*.tar"]))
    assert line.startswith("data.val_shards='v-*.tar' is not read: train.eval_every=0")
    (line,) = config_warnings(load_config(DEBUG, ["train.eval_every=5"]))
    assert line == "train.eval_every=5 does nothing: data.val_shards is empty (no validation runs)"
    (line,) = config_warnings(load_config(DEBUG, ["data.unpaired_fraction=0.3"]))
    assert line.startswith("data.unpaired_fraction=0.3 is not used: synthetic batches")
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert any("data.val_shards" in w for w in config_warnings(paper))  # the paper preset never validates


def test_solver_logs_the_warnings(tmp_path, caplog):
    from vmas.solvers.solver import Solver

    cfg = load_config(DEBUG, [f"train.out_dir={tmp_path}", "train.engine=torch", "train.progress=false",
                              "optim.max_steps=1", "train.save_every=1", "data.val_shards=v-*.tar"])
    with caplog.at_level(logging.INFO):
        summary = Solver(cfg).fit()
    assert summary["best_val_ce"] is None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("data.val_shards='v-*.tar' is not read" in w for w in warned), warned


def test_training_overrides_nobody_reads_warn(tmp_path, capsys):
    from vmas.solvers.cli import main

    assert unread_overrides(["data.batch_size=2", "generation.cfg=4"]) == []
    rc = main([str(DEBUG), f"train.out_dir={tmp_path}", "train.engine=torch", "train.progress=false",
               "optim.max_steps=1", "train.save_every=1", "data.curation.variety_threshold=0.5"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert rc == 0
    assert warnings == ["warning: data.curation.variety_threshold has no effect on training: it is read by curation "
                        "(python -m vmas.disco_mv)"]


def test_curation_overrides_outside_data_warn(tmp_path, capsys):
    from vmas.disco_mv import main

    rc = main([str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--config", str(DEBUG), "optim.lr=0.5",
               "data.curation.embedder=histogram"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2  # the missing input, after the warning
    assert "warning: optim.lr has no effect on curation (it reads data.*)" in err
    assert not any("data.curation.embedder" in line for line in err if line.startswith("warning:"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the launcher's CPU branch")
def test_train_sh_says_which_launcher_settings_it_ignores(tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text("print('rank ran')\n")
    env = {**os.environ, "GPUS_PER_NODE": "4", "ENTRY": str(entry), "MASTER_PORT": "29517"}
    res = subprocess.run(["bash", str(ROOT / "train.sh"), str(DEBUG)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning: no GPU here: GPUS_PER_NODE, HOSTFILE and NODE_RANK are not used (NPROC=1 CPU processes)" \
        in res.stderr
    assert "rank ran" in res.stdout


def test_generation_set_of_training_settings_warns(caplog):
    from vmas.hub import load_model

    with caplog.at_level(logging.WARNING, logger="vmas.hub"):
        pipe = load_model("vmas-debug-random", overrides=["optim.lr=0.5", "generation.top_k=3", "train.seed=2"])
    warned = [r.getMessage() for r in caplog.records if r.name == "vmas.hub"]
    assert warned == ["warning: optim.lr has no effect on generation (a training or data-preparation setting)",
                      "warning: train.seed has no effect on generation (a training or data-preparation setting)"]
    assert pipe.spec.sampling.top_k == 3  # a generation setting is applied, and not warned about
