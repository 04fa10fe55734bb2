"""``vmas.evaluation.evaluate`` as a table of metric runners (issue 33): the table covers every metric once, runs
in its own order whatever the caller's, and a runner that fails skips its metric only."""
import inspect
import json
import math
from pathlib import Path

import numpy as np

from vmas.errors import VmasError

SR = 16000


def _clips(root: Path, n: int = 3) -> Path:
    """``n`` 2 s noise clips: reference ``ref<i>.wav``, generated ``gen/c<i>.wav``; returns the manifest."""
    import soundfile as sf

    (root / "gen").mkdir()
    for i in range(n):
        rng = np.random.default_rng(i)
        sf.write(str(root / f"ref{i}.wav"), (0.1 * rng.normal(size=2 * SR)).astype(np.float32), SR)
        sf.write(str(root / "gen" / f"c{i}.wav"), (0.3 * rng.normal(size=2 * SR)).astype(np.float32), SR)
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"c{i}", "audio": f"ref{i}.wav"}) + "\n" for i in range(n)))
    return manifest


def test_runners_cover_exactly_all_metrics_in_their_order():
    from vmas.evaluation import ALL_METRICS, RUNNERS

    assert sorted(RUNNERS) == sorted(ALL_METRICS) and len(RUNNERS) == len(ALL_METRICS)
    order = list(RUNNERS)
    assert order.index("mv_align") < order.index("beat")  # beat reuses the motion MV-Align reads
    for name, runner in RUNNERS.items():  # each says what it computes, reads and writes
        doc = inspect.getdoc(getattr(runner, "func", runner))
        assert doc and "reads" in doc.lower() and "writes" in doc.lower(), name


def test_a_failing_runner_skips_only_its_own_metric(tmp_path, monkeypatch):
    import vmas.evaluation as ev

    manifest = _clips(tmp_path)
    kwargs = dict(fad_backbone="mel", fd_backbone="mel", kl_classifier="mel", progress=False)
    alone = ev.evaluate(tmp_path / "gen", manifest, metrics=["fad", "kl"], **kwargs)

    def broken(ctx):
        raise VmasError("fd backbone exploded; fix it")

    monkeypatch.setitem(ev.RUNNERS, "fd", broken)  # fd runs between fad and kl
    report = ev.evaluate(tmp_path / "gen", manifest, metrics=["kl", "fd", "fad"], **kwargs)
    assert report["meta"]["skipped"] == {"fd": "fd backbone exploded; fix it"}
    for m in ("fad", "kl"):  # the others: the same numbers as without the failing metric
        assert math.isfinite(report[m]) and report[m] == alone[m], m
        assert report["coverage"][m] == alone["coverage"][m] and report["coverage"][m]["fraction"] == 1.0
    assert [k for k in report if k in ("fad", "fd", "kl")] == ["fad", "kl"]  # RUNNERS' order, not the call's
    assert "fd" not in report["coverage"] and "fd" not in report["meta"]["backbones"]


def test_a_misspelt_option_fails_the_run_loudly(tmp_path):
    """A metric that cannot run for want of weights is skipped with its reason; a misspelt backbone, classifier or
    flow name is the user's error and stops the evaluation in one line (it must not read as a skipped metric)."""
    import pytest

    from vmas.errors import ConfigError
    from vmas.evaluation import evaluate

    manifest = _clips(tmp_path)
    for option, metric in (({"fad_backbone": "vgish"}, "fad"), ({"kl_classifier": "pastt"}, "kl"),
                           ({"fd_backbone": "clp"}, "fd")):
        with pytest.raises(ConfigError, match="unknown"):
            evaluate(tmp_path / "gen", manifest, metrics=[metric], progress=False, **option)
