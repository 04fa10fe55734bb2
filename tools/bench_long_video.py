"""Time and peak memory of ``vmas generate`` on long videos (issue 18): is it linear in length, is memory bounded?

    OMP_NUM_THREADS=2 .venv/bin/python tools/bench_long_video.py --minutes 1 3 10 --out outputs/bench_long --json

For each length it writes generated footage (``--width`` x ``--height`` at ``--fps``: a moving colour pattern with a
quiet 220 Hz tone as its own audio track, so the default ``--mix keep`` path runs, ducking included), then runs
``python -m vmas generate VIDEO -o OUT -q`` as a separate process (the default model unless ``--model``) and
records its wall time and peak resident memory (``wait4``'s ``ru_maxrss``: the whole process, imports and model
included). Results go to ``OUT/bench_long_video.json`` after each length; a rerun with the same settings reuses the
lengths already measured. The printed JSON has ``meta`` (command, commit, date, machine, load average), one row per
length (with the commit that measured it) with ``seconds_per_video_minute``, flat when time is linear in length, and
``summary`` (issue 35): peak RSS growth in MB per video minute between the shortest and the longest length, the
longest's peak over the shortest's, CPU seconds per video minute at each length. ``meta.load_before``/``load_avg``:
the load average when the run started / ended.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_long_video.py --minutes 1 10 30 --model vmas-debug-random \
        --out outputs/bench_long_debug --json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vmas.experiments.provenance import provenance


def write_footage(path: Path, seconds: float, fps: int, width: int, height: int, sr: int = 32000) -> Path:
    """Footage written frame by frame (memory: one frame): a diagonal colour ramp scrolling 3 px per frame, and a
    quiet tone as the video's own audio. H.264 ultrafast + AAC."""
    import av

    n = round(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), "w") as c:
        v = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = c.add_stream("aac", rate=sr, layout="mono")
        for i in range(n):
            ramp = (xx + yy + 3 * i) % 256
            img = np.stack([ramp, (ramp * 2 + i) % 256, 255 - ramp], axis=-1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in v.encode(frame):
                c.mux(p)
            # the audio of this frame's time span, so the file is interleaved as it is written
            s0, s1 = round(i * sr / fps), round((i + 1) * sr / fps)
            tone = (0.05 * np.sin(2 * np.pi * 220 * np.arange(s0, s1) / sr)).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            af.sample_rate, af.pts = sr, s0
            for p in a.encode(af):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    tmp.replace(path)
    return path


def run_generate(video: Path, out: Path, model: str | None) -> dict:
    """``python -m vmas generate`` in its own process: wall seconds, peak RSS (MB), the output's audio length."""
    from vmas.data.media import audio_duration, probe_video

    for old in out.glob(f"{video.stem}.*"):  # a previous run's outputs (vmas generate keeps existing files)
        old.unlink()
    cmd = [sys.executable, "-m", "vmas", "generate", str(video), "-o", str(out), "-q"]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        sys.exit(f"vmas generate failed (exit {rc}): {stderr.strip()[-500:]}")
    mp4 = out / f"{video.stem}.mp4"
    return dict(wall_s=round(wall, 2), peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
                cpu_s=round(usage.ru_utime + usage.ru_stime, 2), video_s=round(probe_video(video).duration, 3),
                mp4_audio_s=round(audio_duration(mp4), 3), stdout=stdout.strip().splitlines()[-1:])


def summarize(rows: list) -> dict:
    """Memory growth and time per minute over ``rows`` (sorted by length): what stays flat when memory is bounded
    and time is linear."""
    if len(rows) < 2:
        return {}
    a, b = rows[0], rows[-1]
    return dict(peak_rss_mb_per_video_minute=round((b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["minutes"] - a["minutes"]), 2),
                peak_rss_longest_over_shortest=round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
                cpu_s_per_video_minute=[round(r["cpu_s"] / r["minutes"], 2) for r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 3.0, 10.0], help="video lengths to measure")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_long"), help="footage, outputs and results")
    ap.add_argument("--model", default=None, help="model name or checkpoint (default: the package's default)")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args(argv)
    if any(m <= 0 for m in args.minutes):
        ap.error("--minutes must be positive")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "bench_long_video.json"
    settings = dict(model=args.model or "default", fps=args.fps, width=args.width, height=args.height)
    old = json.loads(results_path.read_text()) if results_path.exists() else {}
    rows = {r["minutes"]: r for r in old.get("rows", [])} if old.get("settings") == settings else {}
    load_before = old.get("meta", {}).get("load_before") if rows else None
    load_before = load_before or os.getloadavg()
    for minutes in args.minutes:
        if minutes in rows:
            continue
        video = write_footage(args.out / f"footage_{minutes:g}min.mp4", minutes * 60, args.fps, args.width,
                              args.height)
        row = dict(minutes=minutes, **run_generate(video, args.out / "generated", args.model))
        row["seconds_per_video_minute"] = round(row["wall_s"] / minutes, 2)
        prov = provenance()  # per row too: a rerun reuses rows measured by an earlier commit, and says so
        row.update(commit=prov["commit"], dirty_tree=prov["dirty_tree"])
        rows[minutes] = row
        meta = dict(command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
                    **prov, load_before=load_before,
                    load_avg=os.getloadavg(), omp_num_threads=os.environ.get("OMP_NUM_THREADS", ""))
        ordered = sorted(rows.values(), key=lambda r: r["minutes"])
        results_path.write_text(json.dumps(dict(settings=settings, meta=meta, summary=summarize(ordered),
                                                rows=ordered), indent=1))
    result = json.loads(results_path.read_text())
    result["rows"] = [rows[m] for m in sorted(set(args.minutes))]
    if args.json:
        print(json.dumps(result))
    else:
        for r in result["rows"]:
            print(f"{r['minutes']:g} min: {r['wall_s']:.1f} s ({r['seconds_per_video_minute']:.1f} s per minute of "
                  f"video), peak RSS {r['peak_rss_mb']:.0f} MB, audio {r['mp4_audio_s']:.3f} s of "
                  f"{r['video_s']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
