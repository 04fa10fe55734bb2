"""Fixed cost of ``vmas generate`` (issue 18): a whole process for a short clip, median of ``--runs``.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_startup.py --runs 3 --json > docs/results/startup.json

Runs, each as a separate process (the way a user pays for it): ``python -c "import vmas.generate"`` (the import
cost alone) and ``python -m vmas generate vmas/assets/example.mp4 -o OUT -q --overwrite --duration SECONDS`` with
the default model and no tags (what the start-up target is about: no text encoder, no transformers). For each it
records wall time, CPU time (user + sys, from ``wait4``: on a shared machine the wall time also counts waiting for a
core) and peak resident memory; the printed JSON has the medians, every run, and ``meta`` (command, commit, date,
machine, the load average before and after, since other processes inflate wall times).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vmas.experiments.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "vmas" / "assets" / "example.mp4"


def measure(cmd: list) -> dict:
    """Wall time, CPU time and peak RSS of one process running ``cmd`` (its output discarded; a failure raises)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {' '.join(map(str, cmd))} failed: {err.strip().splitlines()[-1:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _median(rows: list) -> dict:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="processes per measurement (the median is reported)")
    p.add_argument("--seconds", type=float, default=3.0, help="--duration of the generation run")
    p.add_argument("--model", default=None, help="model name or path (default: the package's default model)")
    p.add_argument("--out", default="outputs/bench_startup", help="output folder of the generation runs")
    p.add_argument("--json", action="store_true", help="print only the JSON")
    args = p.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0:
        raise SystemExit("error: --runs must be >= 1 and --seconds > 0")
    load_before = os.getloadavg()
    generate = [sys.executable, "-m", "vmas", "generate", str(EXAMPLE), "-o", args.out, "-q", "--overwrite",
                "--duration", f"{args.seconds:g}"] + (["--model", args.model] if args.model else [])
    steps = {"import vmas.generate": [sys.executable, "-c", "import vmas.generate"], "vmas generate": generate}
    runs = {name: [measure(cmd) for _ in range(args.runs)] for name, cmd in steps.items()}
    result = {
        "meta": {"command": "python tools/bench_startup.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "generate_command": "python -m vmas generate " + " ".join(map(str, generate[4:])),
                 **provenance(), "python": platform.python_version(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""), "load_avg_before": load_before,
                 "load_avg_after": os.getloadavg()},
        "median": {name: _median(rows) for name, rows in runs.items()},
        "runs": runs,
    }
    if not args.json:
        for name, m in result["median"].items():
            print(f"{name}: {m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s CPU, {m['peak_rss_mb']:.0f} MB (median of "
                  f"{args.runs})", file=sys.stderr)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
