"""Issue 36: the data commands run from any folder, through the installed package.

``python -m datasets.synthmv`` / ``datasets.disco_mv`` only work from the repository root (``datasets/`` is not in
the wheel); the README now names ``python -m vmas.synthmv`` and ``python -m vmas.disco_mv``. Run here from a folder
outside the repository at tiny size, the way a user of the installed package would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": ""}  # nothing but the installed package


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_synthmv_and_curation_run_outside_the_repository(tmp_path):
    from vmas.data.media import probe_video

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert not (elsewhere / "datasets").exists()
    res = _run(["-m", "datasets.synthmv", "--help"], elsewhere)  # what the issue saw: the repo alias needs the root
    assert res.returncode != 0 and "No module named 'datasets'" in res.stderr

    res = _run(["-m", "vmas.synthmv", "--out", "gen", "--num", "2", "--seconds", "3", "--size", "16",
                "--workers", "1", "--seed", "4"], elsewhere)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (elsewhere / "gen" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        labels = json.loads((elsewhere / "gen" / row["labels"]).read_text())
        assert labels["seconds"] == 3 and labels["size"] == 16
        info = probe_video(elsewhere / "gen" / row["path"])
        assert (info.width, info.height) == (16, 16) and abs(info.duration - 3.0) <= 2 / 25  # 25 fps, whole frames

    # the curation command on those clips, from the same folder (debug preset, no Demucs, weight-free embedder)
    res = _run(["-m", "vmas.disco_mv", "gen", "--out", "cur", "--config", str(ROOT / "configs" / "debug.yaml"),
                "--no-vocal-removal", "--accept-drops", "data.curation.embedder=histogram"], elsewhere)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((elsewhere / "cur" / "summary.json").read_text())
    assert summary["videos"] == 2
    assert "usage: python -m vmas.disco_mv" in _run(["-m", "vmas.disco_mv", "--help"], elsewhere).stdout


def test_repository_aliases_are_the_package_modules():
    import datasets.disco_mv
    import datasets.synthmv
    import vmas.disco_mv
    import vmas.synthmv

    assert datasets.synthmv is vmas.synthmv and datasets.disco_mv is vmas.disco_mv
