"""Which file is a clip's music in a folder (issue 36, defect 3): one file per clip stem. ``vmas generate`` writes
``NAME.wav`` (the raw music) and ``NAME.mp4`` (the finished mix, which may hold the video's own sound): the .wav
is read, once. Any other stem with several audio files is an error that lists them (FAD once read both files of
every pair: 8 ref / 16 gen, a different number)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmas.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def _wav(path: Path, wav: np.ndarray) -> Path:
    import soundfile as sf

    sf.write(str(path), wav.astype(np.float32), SR)
    return path


def _audio_mp4(path: Path, wav: np.ndarray) -> Path:
    """An mp4 holding only an AAC audio stream (stands in for the finished mix `vmas generate` muxes)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=SR)
        stream.layout = "mono"
        for s in range(0, wav.size, 1024):
            frame = av.AudioFrame.from_ndarray(wav[None, s: s + 1024].astype(np.float32), format="flt", layout="mono")
            frame.sample_rate = SR
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)
    return path


def _folders(root: Path, n: int = 3):
    """ref/<c>.wav (noise), gen/<c>.wav (a louder noise) + gen/<c>.mp4 (a tone: the 'mix', very unlike both)."""
    rng = np.random.default_rng(0)
    (root / "ref").mkdir()
    (root / "gen").mkdir()
    t = np.arange(2 * SR) / SR
    for i in range(n):
        _wav(root / "ref" / f"c{i}.wav", rng.normal(size=2 * SR) * 0.1)
        _wav(root / "gen" / f"c{i}.wav", rng.normal(size=2 * SR) * 0.3)
        _audio_mp4(root / "gen" / f"c{i}.mp4", 0.5 * np.sin(2 * np.pi * (440 + 50 * i) * t))
    return root / "ref", root / "gen"


def _evaluate(argv, cwd):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd)
    return proc


def test_generate_output_folder_counts_each_clip_once_from_its_wav(tmp_path):
    ref, gen = _folders(tmp_path)
    out = tmp_path / "r.json"
    proc = _evaluate(["--reference", ref, "--generated", gen, "--fad-backbone", "mel", "--out", out,
                      "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["meta"]["clips"]["fad"]["generated"] == 3 and report["meta"]["clips"]["fad"]["reference"] == 3
    # the same number as the raw music alone: the mixes are not read at all
    wav_only = tmp_path / "wav_only"
    wav_only.mkdir()
    for f in gen.glob("*.wav"):
        (wav_only / f.name).write_bytes(f.read_bytes())
    out2 = tmp_path / "r2.json"
    assert _evaluate(["--reference", ref, "--generated", wav_only, "--fad-backbone", "mel", "--out", out2,
                      "--no-progress"], tmp_path).returncode == 0
    assert report["fad"] == json.loads(out2.read_text())["fad"]


def test_several_files_for_one_clip_are_an_error_listing_them(tmp_path):
    from vmas.evaluation import evaluate, find_audio, list_audio

    ref, gen = _folders(tmp_path)
    _wav(gen / "c1.flac", np.zeros(SR))  # c1: wav + flac + mp4; c2: mp3 + mp4 (not the generate pair)
    (gen / "c2.wav").rename(gen / "c2.mp3")
    with pytest.raises(DataError) as err:
        list_audio(gen)
    text = str(err.value)
    assert "c1 (c1.flac, c1.mp4, c1.wav)" in text and "c2 (c2.mp3, c2.mp4)" in text and "c0" not in text
    assert "\n" not in text and "one file per clip" in text
    proc = _evaluate(["--reference", ref, "--generated", gen, "--fad-backbone", "mel", "--out",
                      tmp_path / "r.json", "--no-progress"], tmp_path)
    assert proc.returncode == 2 and "c1 (c1.flac, c1.mp4, c1.wav)" in proc.stderr
    # the manifest path reads <id>.* by the same rule
    assert find_audio(gen, "c0") == gen / "c0.wav"
    with pytest.raises(DataError, match=r"c1 \(c1.flac, c1.mp4, c1.wav\)"):
        find_audio(gen, "c1")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"c{i}", "audio": f"ref/c{i}.wav"}) + "\n" for i in range(3)))
    with pytest.raises(DataError, match="c2 \\(c2.mp3, c2.mp4\\)"):
        evaluate(gen, manifest, metrics=["fad"], fad_backbone="mel", progress=False)
    # a hidden file (macOS ._c0.wav, a temp file) is not a clip; a lone mp4 is read (a folder of videos)
    (gen / "c1.flac").unlink()
    (gen / "c2.mp3").unlink()
    _wav(gen / "._c0.wav", np.zeros(SR))
    assert [p.name for p in list_audio(gen)] == ["c0.wav", "c1.wav", "c2.mp4"]
