"""An existing output is "nothing to do", not a failure (issue 36): ``vmas generate`` without ``--overwrite`` skips an
input whose NAME.wav / NAME.mp4 exist with one summary line and exit 0, so a script can tell that from a broken
input (exit 1, ``skipping FILE: reason``)."""
from test_generate import _video

from vmas.cli import main
from vmas.errors import MediaError
from vmas.generate import OutputExists

MODEL = ["--model", "vmas-debug-random", "--top-k", "16", "-q", "--mix", "replace"]


def test_existing_outputs_are_skipped_with_exit_0_and_failures_still_exit_1(tmp_path, capsys):
    src = tmp_path / "clips"
    src.mkdir()
    _video(src / "a.mp4", 1.0)
    _video(src / "b.mp4", 1.0, seed=1)
    out = tmp_path / "out"
    assert main(["generate", str(src / "a.mp4"), "-o", str(out), *MODEL]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # a.mp4 has outputs: skipped (kept untouched), b.mp4 is generated; nothing failed -> exit 0
    assert main(["generate", str(src), "-o", str(out), *MODEL]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert [line for line in err if line.startswith("skipped")] == [
        f"skipped 1 input whose outputs exist in {out} (a.mp4): pass --overwrite to replace them"]
    assert not any(line.startswith("skipping") for line in err)  # not reported as a failure
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.stem == "a"} == before
    assert (out / "b.wav").is_file() and str(out / "b.mp4") in captured.out

    # everything exists: nothing to do, still exit 0
    assert main(["generate", str(src), "-o", str(out), *MODEL]) == 0
    assert "skipped 2 inputs whose outputs exist" in capsys.readouterr().err

    # a broken input beside existing ones: exit 1, the failure named, the skips summarised apart
    (src / "bad.mp4").write_bytes((src / "a.mp4").read_bytes()[:500])
    assert main(["generate", str(src), "-o", str(out), *MODEL]) == 1
    err = capsys.readouterr().err
    assert f"skipping {src / 'bad.mp4'}: " in err and "1 of 3 file(s) failed" in err
    assert "skipped 2 inputs whose outputs exist" in err


def test_output_exists_is_a_media_error_the_library_raises():
    """Library callers (generate_for_video(overwrite=False)) get the distinct type, still a MediaError."""
    assert issubclass(OutputExists, MediaError)
