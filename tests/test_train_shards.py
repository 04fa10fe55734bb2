"""Issue 36, defect 1: a run given shards trains on them, whatever the preset says about ``train.synthetic``.

``configs/debug.yaml`` sets ``train.synthetic: true``; ``bash train.sh configs/debug.yaml data.train_shards=...`` used
to train on random batches (the preset won, nothing was printed). Now a layer (a preset, or the command line) that
names ``data.train_shards`` without naming ``train.synthetic`` turns synthetic batches off, and a command line that
names both (or ``--synthetic`` beside shards) is refused in one line naming both settings.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from test_data_resume import _write_shards  # decodable tiny shards of the debug data config (tests/ is on sys.path)

from vmas.config import load_config
from vmas.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    _write_shards(root, [3, 3], load_config(DEBUG))  # 6 clips, keys s0_000 .. s1_002
    return root


def test_shards_on_the_command_line_turn_the_presets_synthetic_off():
    assert load_config(DEBUG).train.synthetic  # the preset's smoke-run default
    cfg = load_config(DEBUG, ["data.train_shards=x/train-*.tar"])
    assert not cfg.train.synthetic and cfg.data.train_shards == "x/train-*.tar"
    # an explicit train.synthetic=false beside them is the same run; clearing the shards changes nothing
    assert not load_config(DEBUG, ["train.synthetic=false", "data.train_shards=x/train-*.tar"]).train.synthetic
    assert load_config(DEBUG, ["data.train_shards="]).train.synthetic


def test_shards_and_synthetic_both_on_the_command_line_are_refused():
    for overrides in (["train.synthetic=true", "data.train_shards=x/train-*.tar"],
                      ["data.train_shards=x/train-*.tar", "train.synthetic=true"]):
        with pytest.raises(ConfigError) as err:
            load_config(DEBUG, overrides)
        msg = str(err.value)
        assert "\n" not in msg and "train.synthetic=true" in msg and "data.train_shards=x/train-*.tar" in msg, msg


def test_a_preset_naming_shards_overrides_its_base_presets_synthetic(tmp_path):
    """A user preset ``base: debug.yaml`` + ``data.train_shards``: the same rule per layer (a silent loss before)."""
    own = tmp_path / "mine.yaml"
    own.write_text(f"base: {DEBUG}\ndata:\n  train_shards: x/train-*.tar\n")
    assert not load_config(own).train.synthetic
    own.write_text(f"base: {DEBUG}\ndata:\n  train_shards: x/train-*.tar\ntrain:\n  synthetic: true\n")
    with pytest.raises(ConfigError, match=r"mine.yaml.*train.synthetic.*data.train_shards"):
        load_config(own)


def test_train_py_with_shards_trains_on_them(tmp_path, shard_dir, capsys, caplog):
    """The issue's command (in process, plain PyTorch engine): the run reads the shards and says so."""
    import vmas.data.loader as loader_mod
    from vmas.solvers.cli import main

    seen = []
    collate = loader_mod.collate

    def spy(samples):
        seen.extend(s["key"] for s in samples)
        return collate(samples)

    out = tmp_path / "run"
    pattern = f"{shard_dir}/train-*.tar"
    args = [str(DEBUG), f"data.train_shards={pattern}", f"train.out_dir={out}", "train.engine=torch",
            "train.progress=false", "optim.max_steps=2", "train.save_every=2", "data.shuffle_buffer=0"]
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.INFO):
        mp.setattr(loader_mod, "collate", spy)
        rc = main(args)
    assert rc == 0, capsys.readouterr().err
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["train"]["synthetic"] is False and stored["data"]["train_shards"] == pattern
    assert seen and all(k.startswith(("s0_", "s1_")) for k in seen), seen  # shard keys, not synthetic/NNNNNN
    assert any(f"data: shards {pattern}" in r.getMessage() for r in caplog.records)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def test_train_py_refuses_synthetic_flag_beside_shards(tmp_path, capsys):
    from vmas.solvers.cli import main

    rc = main([str(DEBUG), "--synthetic", "data.train_shards=x/train-*.tar", f"train.out_dir={tmp_path}",
               "train.engine=torch", "train.progress=false", "optim.max_steps=1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "--synthetic" in err[0] and "data.train_shards" in err[0], err


def test_synthetic_run_says_so(tmp_path, caplog):
    from vmas.solvers.solver import Solver

    cfg = load_config(DEBUG, [f"train.out_dir={tmp_path}", "train.engine=torch", "train.progress=false",
                              "optim.max_steps=1", "train.save_every=1"])
    with caplog.at_level(logging.INFO):
        Solver(cfg).fit()
    assert any("data: synthetic batches (train.synthetic=true" in r.getMessage() for r in caplog.records)
