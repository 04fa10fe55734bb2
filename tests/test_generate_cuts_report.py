"""`vmas generate --cuts auto` says what it found (issue 35 part 4): the cut times, or "no cuts found"; --cuts /
--hits times past the video's end are named in one warning line (CLI) and on the page, not dropped silently."""
from __future__ import annotations

import pytest

from vmas.generate import GenerationResult


def test_cuts_note_by_hand():
    r = GenerationResult(video=None, wav=None, mp4=None, duration=1.0, tags=[], windows=1)
    assert r.cuts_note == ""
    assert GenerationResult(None, None, None, 1.0, [], 1, cuts=[]).cuts_note == "no cuts found"
    assert GenerationResult(None, None, None, 1.0, [], 1, cuts=[3.2, 7.844]).cuts_note == "cuts at 3.20, 7.84 s"


@pytest.mark.slow
def test_cli_prints_detected_cuts_or_none(tmp_path, capsys):
    """A two-scene SynthMV clip: the detected cut is printed where the structure detector puts it; one scene:
    "no cuts found"; no --cuts: nothing about cuts."""
    from vmas import structure
    from vmas.cli import main
    from vmas.synthmv import generate_multiscene

    two = generate_multiscene(11, scenes=2, seconds=6.0, size=32, out_path=tmp_path / "two.mp4")
    generate_multiscene(5, scenes=1, seconds=4.0, size=32, out_path=tmp_path / "one.mp4")
    common = ["-o", str(tmp_path / "out"), "--model", "vmas-debug-random", "--top-k", "16", "-q", "--mix", "replace"]
    assert main(["generate", str(tmp_path / "two.mp4"), str(tmp_path / "one.mp4"), "--cuts", "auto", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    cut = structure.detect_cuts(tmp_path / "two.mp4")
    assert cut == two.labels["cuts"] and len(cut) == 1
    assert any("two.mp4" in ln and f"cuts at {cut[0]:.2f} s" in ln for ln in lines), lines
    assert any("one.mp4" in ln and "no cuts found" in ln for ln in lines), lines
    assert main(["generate", str(tmp_path / "one.mp4"), "--overwrite", *common]) == 0
    printed = capsys.readouterr().out
    assert "one.mp4" in printed and "no cuts found" not in printed and "cuts at" not in printed


def test_web_page_keeps_the_error_line_in_its_summary(tmp_path):
    """A broken upload: the page's generate answers with the CLI's one-line error in the summary (which stays until
    the next request) and empty outputs, instead of raising (a toast that fades and red 'Error' badges)."""
    pytest.importorskip("gradio")
    from vmas.app import build_app
    from vmas.hub import load_model

    page = build_app(load_model("vmas-debug-random", device="cpu"), "vmas-debug-random", out_root=tmp_path / "o")
    fn = next(f.fn for f in page.fns.values() if f.api_name == "generate")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    args = [str(broken), "", "", "", None, "", "all", 3.0, 0.0, False, 0, 0, 0, 0.0, 1.0, "replace", -12.0, -4.0,
            -14.0]
    video, files, used, summary = fn(*args, progress=lambda *a, **k: None)
    assert (video, files, used) == (None, [], "")
    assert summary.startswith("error: broken.mp4: ") and "\n" not in summary and "Traceback" not in summary


def test_upload_the_browser_cannot_preview_gets_a_note():
    from vmas.app import preview_note

    assert preview_note(None) == "" and preview_note("/x/clip.MP4") == "" and preview_note("/x/a.webm") == ""
    note = preview_note("/x/tree.avi")
    assert note.startswith("preview unavailable: browsers do not play .avi files") and "Generate" in note


def test_times_past_end_note_by_hand():
    from vmas import structure

    assert structure.times_past_end("2.5, 9, 4", "--cuts", 4.0) == [4.0, 9.0]  # at the end counts: nothing follows
    assert structure.times_past_end("auto", "--cuts", 4.0) == [] and structure.times_past_end(None, "--hits", 1) == []
    r = GenerationResult(None, None, None, 3.0, [], 1)
    assert r.past_end_note == ""
    r = GenerationResult(None, None, None, 3.0, [], 1, past_end={"--cuts": [5.0, 9.25], "--hits": [3.5]})
    assert r.past_end_note == "--cuts 5.00, 9.25 s and --hits 3.50 s past the end of the video (3.00 s): ignored"


def _still_video(path, seconds: float = 3.0, fps: int = 10):
    """A silent 48x32 H.264 clip of ``seconds`` (the content does not matter here)."""
    from fractions import Fraction

    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        for k in range(round(seconds * fps)):
            f = av.VideoFrame.from_ndarray((rng.random((32, 48, 3)) * 255).astype(np.uint8), format="rgb24")
            f.pts, f.time_base = k, Fraction(1, fps)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


BEAT_MODEL = ["--model", "vmas-debug-random", "--set", "model.lm.beat_condition=true", "--top-k", "16", "-q",
              "--mix", "replace"]


def test_cli_warns_once_about_cuts_and_hits_past_the_end(tmp_path, capsys):
    """A 3 s video with --cuts 1.5,5,9.25 and --hits 1,3.5: one stderr warning line names 5.00, 9.25 and 3.50 s
    and the length (3.00 s); the cut inside the video is still used (and reported)."""
    from vmas.cli import main

    video = _still_video(tmp_path / "clip.mp4")
    assert main(["generate", str(video), "-o", str(tmp_path / "out"), "--cuts", "1.5,5,9.25", "--hits", "1,3.5",
                 *BEAT_MODEL]) == 0
    out, err = capsys.readouterr()
    warnings = [ln for ln in err.splitlines() if "past the end" in ln]
    assert warnings == [f"warning: {video}: --cuts 5.00, 9.25 s and --hits 3.50 s past the end of the video "
                        "(3.00 s): ignored"], err
    assert "cuts at 1.50 s" in out
    assert main(["generate", str(video), "-o", str(tmp_path / "out"), "--cuts", "1.5", "--overwrite",
                 *BEAT_MODEL]) == 0
    assert "past the end" not in capsys.readouterr().err  # nothing dropped: no warning


def test_web_page_shows_cuts_past_the_end(tmp_path):
    """The page's Cuts field reaches the library as --cuts does, and its summary carries the CLI's warning."""
    pytest.importorskip("gradio")
    from vmas.app import build_app
    from vmas.hub import load_model

    pipe = load_model("vmas-debug-random", device="cpu")
    page = build_app(pipe, "vmas-debug-random", out_root=tmp_path / "o")
    fn = next(f for f in page.fns.values() if f.api_name == "generate")
    labels = [getattr(c, "elem_id", None) for c in fn.inputs]
    assert labels[-3:-1] == ["cuts", "hits"]
    video = _still_video(tmp_path / "clip.mp4")
    args = [str(video), "", "", "", 0, "", "all", 3.0, 0.0, "off", 0, 0, 16, 0.0, 1.0, "replace", -12.0, -4.0, 0,
            "1.5, 7", ""]
    _, files, _, summary = fn.fn(*args, progress=lambda *a, **k: None)
    assert len(files) == 2, summary
    assert "Scene cuts at 1.50 s" in summary
    assert summary.endswith("Warning: --cuts 7.00 s past the end of the video (3.00 s): ignored"), summary
