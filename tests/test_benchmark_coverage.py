"""tools/benchmark.py on a curation-like manifest (issue 36, defect 2): every clip cut from a long source video is
generated (the cut clip's name once collided with its own output name, so 2 of 3 clips failed and the run still
exited 0), a failed clip makes the run exit non-zero, and each number states how many clips it covers, with no
number printed below ``--min-coverage``."""
import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FPS = 9.6
SR = 32000


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", ROOT / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _curation_like(root: Path, starts=(0.0, 1.0, 2.0)) -> Path:
    """A 3.2 s source video + its music, and a manifest of 1 s clips inside it (the curation's layout: ``key``,
    ``start``, ``duration`` into the whole source, ``split``), plus a train row that ``--split test`` drops."""
    import cv2
    import soundfile as sf

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(root / "src.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (32, 32))
    for _ in range(round(3.2 * FPS)):
        writer.write((rng.random((32, 32, 3)) * 255).astype(np.uint8))
    writer.release()
    t = np.arange(round(3.2 * SR)) / SR
    sf.write(str(root / "src.wav"), (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), SR)
    rows = [{"key": f"src-{k}", "video": "src.mp4", "audio": "src.wav", "start": s, "duration": 1.0, "split": "test"}
            for k, s in enumerate(starts)]
    rows.append({"key": "src-train", "video": "src.mp4", "audio": "src.wav", "start": 0.5, "duration": 1.0,
                 "split": "train"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


ARGS = ["--model", "vmas-debug-random", "--split", "test", "--metrics", "fad,kl", "--fad-backbone", "mel",
        "--kl-classifier", "mel", "--top-k", "16", "--no-progress"]


def test_benchmark_scores_every_cut_clip_and_fails_loudly(tmp_path, capsys):
    tool = _tool()
    manifest = _curation_like(tmp_path)
    out = tmp_path / "bench"
    rc = tool.main(["--manifest", str(manifest), "--out", str(out), *ARGS])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-2000:]
    assert not (out / "failures.jsonl").exists()
    assert sorted(p.name for p in (out / "generated").iterdir() if not p.name.startswith(".")) == [
        f"src-{k}.{ext}" for k in range(3) for ext in ("mp4", "wav")]
    report = json.loads((out / "report.json").read_text())
    assert report["coverage"]["fad"] == {"clips": 3, "of": 3, "fraction": 1.0,
                                         "reference": {"clips": 3, "of": 3, "fraction": 1.0},
                                         "generated": {"clips": 3, "of": 3, "fraction": 1.0}}
    assert report["coverage"]["kl"] == {"clips": 3, "of": 3, "fraction": 1.0}
    assert isinstance(report["fad"], float) and isinstance(report["kl"], float)
    md = (out / "report.md").read_text()
    assert "| fad | " in md and "3/3 ref, 3/3 gen" in md and "| 3/3 |" in md

    # a fourth clip whose video is missing: generation fails for it, the run exits 1, FAD and KL (3 of 4 clips)
    # are withheld with the reason (default --min-coverage 1.0) ...
    rows = manifest.read_text() + json.dumps({"key": "gone", "video": "missing.mp4", "audio": "src.wav",
                                              "start": 1.0, "duration": 1.0, "split": "test"}) + "\n"
    manifest.write_text(rows)
    rc = tool.main(["--manifest", str(manifest), "--out", str(out), *ARGS])
    printed = capsys.readouterr()
    assert rc == 1 and "1 of 4 clip(s) failed" in printed.err
    assert "'skipped': 3" in printed.out  # the three finished clips are not generated again
    report = json.loads((out / "report.json").read_text())
    assert report["fad"] is None and report["kl"] is None
    assert report["coverage"]["fad"]["generated"] == {"clips": 3, "of": 4, "fraction": 0.75}
    assert "covers 3 of 4 clips" in report["meta"]["withheld"]["fad"]
    assert "--min-coverage" in report["meta"]["withheld"]["fad"]
    md = (out / "report.md").read_text()
    assert "| fad | — |" in md and "**fad withheld**" in md
    # ... and printed, with their coverage, when the caller accepts 3 of 4; the failed clip still fails the run
    rc = tool.main(["--manifest", str(manifest), "--out", str(out), *ARGS, "--min-coverage", "0.75"])
    capsys.readouterr()
    assert rc == 1
    report = json.loads((out / "report.json").read_text())
    assert isinstance(report["fad"], float) and report["coverage"]["kl"] == {"clips": 3, "of": 4, "fraction": 0.75}
    assert "3/4 ref, 3/4 gen" not in (out / "report.md").read_text()  # the reference side is complete: 4/4
    assert "4/4 ref, 3/4 gen" in (out / "report.md").read_text()


def test_benchmark_refuses_to_score_music_made_with_other_settings(tmp_path, capsys):
    """A resumed run reuses finished clips, so they must come from the same model and controls: another seed (or
    model) on the same --out is an error naming the difference, not a silent mix of two models' music."""
    tool = _tool()
    manifest = _curation_like(tmp_path, starts=(0.0,))
    out = tmp_path / "bench"
    args = ["--manifest", str(manifest), "--out", str(out), *ARGS, "--metrics", "kl"]
    assert tool.main(args) == 0
    record = json.loads((out / "generated" / ".generation.json").read_text())
    assert set(record) == {"model", "cfg", "top_k", "temperature", "seed", "auto_tags"}  # cfg etc.: the defaults
    assert {k: record[k] for k in ("model", "top_k", "seed", "auto_tags")} == {
        "model": "vmas-debug-random", "top_k": 16, "seed": 0, "auto_tags": False}
    assert json.loads((out / "report.json").read_text())["meta"]["generation"] == record
    capsys.readouterr()
    assert tool.main(args + ["--seed", "1"]) == 2
    assert "other settings (seed 0 -> 1)" in capsys.readouterr().err
    assert tool.main(args + ["--seed", "1", "--skip-generation"]) == 0  # only scoring: the record is reported
