"""The experiment harness (vmas.experiments, issue 33): run folders, the training pool's reuse, cached scores,
seed spreads computed by hand, selection rules and the result meta."""
from __future__ import annotations

import json
import math
import sys

import pytest

from vmas.experiments import aggregate, runs


def test_run_dir_layouts(tmp_path):
    assert runs.run_dir(tmp_path, "full", 2) == tmp_path / "full" / "seed2"
    assert runs.run_dir(tmp_path, "full", 0, steps=300) == tmp_path / "steps300" / "full" / "seed0"


def test_train_pool_reuses_finished_runs_and_names_the_log_of_a_failure(tmp_path, monkeypatch):
    done = runs.TrainJob(tmp_path / "done" / "seed0", "no-such-config.yaml")
    done.out.mkdir(parents=True)
    done.model.write_bytes(b"weights")
    # a finished run is never trained again (its config does not even exist), and a shared folder is one job
    assert runs.train_pool([done, done], workers=2, poll_s=0.01) == {done.out: done.model}
    assert not (done.out / "train.log").exists()
    # a failing run stops the pool and names its log (a stand-in trainer that exits 3)
    monkeypatch.setattr(runs, "TRAIN", "import sys; sys.exit(3)")
    bad = runs.TrainJob(tmp_path / "bad" / "seed0", "cfg.yaml", ("optim.max_steps=1",))
    with pytest.raises(SystemExit, match=r"bad/seed0 failed: see .*train.log"):
        runs.train_pool([done, bad], poll_s=0.01)


def test_train_pool_runs_the_trainer_with_the_run_folder_and_resumes(tmp_path, monkeypatch):
    # a stand-in trainer writes its arguments as the model: train.out_dir comes first, then the overrides
    monkeypatch.setattr(runs, "TRAIN", "import sys, pathlib; out = pathlib.Path(sys.argv[2].split('=', 1)[1]); "
                                       "(out / 'model.pt').write_text(' '.join(sys.argv[1:]))")
    job = runs.TrainJob(tmp_path / "v" / "seed1", "c.yaml", ("train.seed=1",))
    (job.out / "checkpoints" / "step_00000002").mkdir(parents=True)
    (job.out / "checkpoints" / "step_00000002" / "meta.json").write_text("{}")
    runs.train_pool([job], poll_s=0.01)
    args = job.model.read_text().split()
    assert args == ["c.yaml", f"train.out_dir={job.out}", "train.seed=1", "--resume"]  # it had a checkpoint


def test_cached_scores_are_keyed_by_model_bytes_and_settings(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"a")
    calls = []

    def compute():
        calls.append(1)
        return {"score": len(calls)}

    assert runs.cached_scores(model, {"seed": 0}, compute) == {"score": 1}
    assert runs.cached_scores(model, {"seed": 0}, compute) == {"score": 1}  # read back
    assert runs.cached_scores(model, {"seed": 1}, compute) == {"score": 2}  # other settings
    assert runs.cached_scores(model, {"seed": 0}, compute, rescore=True) == {"score": 3}
    model.write_bytes(b"b")  # a retrained model
    assert runs.cached_scores(model, {"seed": 0}, compute) == {"score": 4}
    assert len(list(tmp_path.glob("scores_*.json"))) == 3


def test_spreads_over_sampling_and_training_seeds_by_hand():
    assert aggregate.spread([0.1, 0.2, 0.6]) == {"mean": 0.3, "std": round(math.sqrt(0.14 / 3), 4)}
    assert aggregate.over_sampling_seeds([{"a": 0.5}]) == {"a": 0.5}  # one seed: no spread to report
    got = aggregate.over_sampling_seeds([{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 0.5}], digits=4,
                                        drop_nan=True)
    assert got == {"a": {"mean": 2.0, "std": 1.0, "runs": [1.0, 3.0]}, "b": {"mean": 0.5, "std": 0.0, "runs": [0.5]}}
    # two models: model 1's sampling mean 0.2 (std 0.1), model 2 a single value 0.6
    models = [{"f1": {"mean": 0.2, "std": 0.1}, "note": "x"}, {"f1": 0.6, "note": "x"}]
    got = aggregate.over_training_seeds(models)
    assert got["note"] == "x" and got["f1"]["runs"] == [0.2, 0.6]
    assert got["f1"]["mean"] == pytest.approx(0.4) and got["f1"]["std"] == pytest.approx(0.2)
    assert got["f1"]["sampling_std"] == pytest.approx(0.05)


def test_choose_records_its_rule_and_refuses_an_unwritten_one():
    def lowest(tried):
        """The option with the lowest loss."""
        return min(tried, key=lambda k: tried[k]["loss"])

    tried = {0.1: {"loss": 3.0}, 0.2: {"loss": 1.0}}
    assert aggregate.choose(tried, lowest) == 0.2
    assert aggregate.rule_text(lowest) == "The option with the lowest loss."
    with pytest.raises(ValueError, match="no docstring"):
        aggregate.choose(tried, lambda t: 0.1)


def test_result_meta_has_command_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--json", "--steps", "2"])
    meta = aggregate.result_meta("synthmv_benchmark", None, {"codec": tmp_path / "missing.pt"}, steps=2)
    assert meta["command"] == "python tools/synthmv_benchmark.py --json --steps 2" and meta["steps"] == 2
    assert {"commit", "dirty_tree", "date", "machine", "load_avg_1m"} <= set(meta)
    assert meta["codec"]["missing"] is True
    json.dumps(meta)


def test_scene_scores_by_hand():
    import numpy as np

    from vmas.experiments import scene_scores

    sr = 100
    wav = np.zeros(10 * sr)
    # 2 s excerpts every 1 s inside [1, 5]: starts 1, 2, 3 (a 4th would end past 5)
    assert [t for t, _ in scene_scores.judge_windows(wav, sr, 1.0, 5.0, 2.0, 1.0)] == [1.0, 2.0, 3.0]
    assert scene_scores.hits_within([1.00, 2.06], [1.04, 2.0, 3.0]) == 1 / 3  # 2.0 is 60 ms from 2.06
    assert math.isnan(scene_scores.hits_within([1.0], []))
    wav[int(6.3 * sr):] = 1.0  # the music turns loud 1.3 s after a cut at 5 s

    class Loud:  # judges an excerpt as class 1 once it is mostly loud
        def predict(self, wavs, sr):
            return np.array([int(np.mean(w) > 0.5) for w in wavs])

    # excerpts of 1 s from 5.0 every 0.1 s: the first that is > half loud starts at 5.9 (6.3 - 0.5 = 5.8 is exactly
    # half, not more)
    assert scene_scores.switch_latency(wav, sr, 5.0, 10.0, 1, Loud(), window=1.0, step=0.1) == (0.9, True)
    assert scene_scores.switch_latency(wav, sr, 5.0, 6.0, 1, Loud(), window=1.0, step=0.1) == (0.0, False)
