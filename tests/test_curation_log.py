"""Issue 36: curation's start-up INFO line names the variety threshold the run uses, not the embedder's default.

With ``data.curation.variety_threshold=1.01`` (keep every video) the line used to say ``variety threshold 0.75`` (the
pixel embedder's default), so a log could not tell which threshold made the manifest.
"""
from __future__ import annotations

import logging
from pathlib import Path

from test_data_pipeline import write_video

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


def _threshold_lines(caplog):
    return [r.getMessage() for r in caplog.records if "variety threshold" in r.getMessage()]


def test_curation_log_names_the_overridden_threshold(tmp_path, caplog, capsys):
    import json

    from datasets.disco_mv import main

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "clip.mp4", 3.0, [0.5])
    with caplog.at_level(logging.INFO):
        rc = main([str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--config", str(DEBUG),
                   "--no-vocal-removal", "--accept-drops", "data.curation.variety_threshold=1.01"])
    assert rc == 0, capsys.readouterr().err
    lines = _threshold_lines(caplog)
    assert len(lines) == 1 and "variety threshold 1.01" in lines[0], lines
    assert "data.curation.variety_threshold" in lines[0]  # says where the number came from
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["videos_kept"] == 1  # 1.01 keeps every video: the threshold in the line is the one applied


def test_curation_log_names_the_default_when_not_set(caplog):
    from vmas.data import curation

    with caplog.at_level(logging.INFO):
        curation.build_frame_embedder("auto", "", "cpu")
        curation.build_frame_embedder("histogram", "", "cpu", threshold=0.5)
    lines = _threshold_lines(caplog)
    assert "variety threshold 0.75" in lines[0] and "default" in lines[0], lines
    assert "histogram" in lines[1] and "variety threshold 0.5 " in lines[1], lines
