"""`vmas generate --cuts auto` says what it found (issue 35 part 4): the cut times, or "no cuts found"."""
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
