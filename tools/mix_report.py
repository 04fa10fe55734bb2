"""Before/after measurement of the finished audio (issue 24), the numbers in the README.

    python tools/mix_report.py --out outputs/mix_report [--model vmas-synthmv-demo]

Puts two espeak-ng sentences (Debian ``espeak-ng``) into a copy of the bundled example video as its own audio, then
runs ``vmas generate`` twice: as before issue 24 (``--mix replace --loudness off``: the music replaces the audio)
and with the defaults (``--mix keep --duck -12 --music-gain -4 --loudness -14``). For each output mp4 it prints
integrated loudness (BS.1770), true peak, and whether the voice is still there (correlation with the original over
the spoken sentences, and its level change) as JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

SENTENCES = ["Hello everyone, and welcome back to the kitchen.", "Today we are going to bake a loaf of bread."]
SR = 32000


def _speech_track(seconds: float):
    import soundfile

    from vmas.mixing import resample

    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    track, spans, t = np.zeros(round(seconds * SR), np.float32), [], 1.0
    for text in SENTENCES:
        raw = subprocess.run([exe, "--stdout", "-s", "160", text], check=True, capture_output=True).stdout
        wav, rate = soundfile.read(io.BytesIO(raw), dtype="float64")
        active = np.nonzero(np.abs(wav) > 0.01)[0]
        x = resample(wav[active[0]: active[-1] + 1], rate, SR)
        start = round(t * SR)
        track[start: start + x.size] = x[: track.size - start]
        spans.append((t, t + x.size / SR))
        t += x.size / SR + 1.5
    return track, spans


def _measure(mp4: Path, original: np.ndarray, spans) -> dict:
    from vmas import mixing
    from vmas.data import media

    sr = 48000
    audio = media.read_audio(mp4, sr=sr).numpy().astype(np.float64)
    n = min(audio.size, original.size)
    mask = np.zeros(n, bool)
    for a, b in spans:
        mask[round(a * sr): round(b * sr)] = True
    out, ref = audio[:n][mask], original[:n][mask]
    return {"loudness_lufs": round(mixing.integrated_loudness(audio, sr), 2),
            "true_peak_dbtp": round(mixing.true_peak(audio, sr), 2),
            "voice_correlation": round(float(np.corrcoef(out, ref)[0, 1]), 3),
            "voice_level_change_db": round(10 * np.log10(np.mean(out ** 2) / np.mean(ref ** 2)), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/mix_report")
    p.add_argument("--model", default=None, help="model name or checkpoint (default: the package's default)")
    args = p.parse_args(argv)

    from vmas.cli import main as vmas_main
    from vmas.data import media
    from vmas.hub import DEFAULT_MODEL
    from vmas.mixing import integrated_loudness

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    example = Path(__file__).resolve().parents[1] / "vmas" / "assets" / "example.mp4"
    info = media.probe_video(example)
    voice, spans = _speech_track(info.duration)
    talk = media.mux_audio(example, voice, out / "talk.mp4", sr=SR)
    original = media.read_audio(talk, sr=48000).numpy().astype(np.float64)
    model = args.model or DEFAULT_MODEL
    report = {"input": {"video": str(talk), "voice_loudness_lufs": round(integrated_loudness(original, 48000), 2),
                        "sentences_s": [(round(a, 2), round(b, 2)) for a, b in spans]}, "model": model}
    runs = {"before (--mix replace --loudness off)": ["--mix", "replace", "--loudness", "off"], "after (defaults)": []}
    for name, extra in runs.items():
        folder = out / ("before" if name.startswith("before") else "after")
        rc = vmas_main(["generate", str(talk), "-o", str(folder), "--model", model, "-q", *extra])
        if rc != 0:
            return rc
        report[name] = _measure(folder / "talk.mp4", original, spans)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
