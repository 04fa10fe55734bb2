"""Throughput of ``tools/preprocess.py``: 1 process vs ``torchrun --nproc_per_node 2``, and the same shards (issue 20).

(Over 150 lines: it makes its own data and runs three launch modes, then compares their shards byte for byte.)

    python tools/bench_preprocess.py --json > docs/results/preprocess_ranks.json

Makes its own data (``python -m datasets.synthmv --out WORK/syn --num VIDEOS --seed 3 --window 5 --size 64``:
two 5 s windows per 10 s video; reused when ``WORK/syn`` already holds the same set), then runs three commands one
after the other, each into a fresh shard folder, with ``OMP_NUM_THREADS`` (1 unless set) and ``HF_HUB_OFFLINE=1``:

1. ``python tools/preprocess.py ... data.preprocess.decode_workers=0`` (one process, decoding inline),
2. the same with ``data.preprocess.decode_workers=1`` (one process + one DataLoader decode worker),
3. ``python -m torch.distributed.run --nproc_per_node 2 tools/preprocess.py ...`` with ``decode_workers=0``.

All at ``configs/synthmv_tiny.yaml`` sizes (48 frames x 32², 5 s at 32 kHz) with a random-weight codec of its
architecture (``model.codec.pretrained=""``, weights from ``torch.manual_seed(0)`` in every process), Farneback
motion and ``--clips-per-shard`` clips per shard. Around each command: wall time (start-up included) and the CPU
time of the children (``getrusage(RUSAGE_CHILDREN)`` deltas, torchrun's workers and decode workers included), plus
each process's own time inside the shard loop (``seconds`` of its summary). Then the torchrun shards are compared
with each 1-process run member by member (:func:`vmas.data.shards.compare_shards`: codes, beats, beat weights, tags
and json byte-identical, motion to rtol 1e-5, frames mp4 by decoded pixels).

Prints one JSON object (``runs``, ``ratios``, ``shards_compared``, ``meta``: command, commit, date, machine, load
average before / after, OMP_NUM_THREADS, seeds, data). Exits 1 with a one-line error (after the JSON) when a shard
differs beyond the tolerances, 2 when a command fails. On a shared machine the wall-clock ratios mostly show the
CPU share the runs got (see the load averages), not how preprocessing scales.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from vmas.data import shards
from vmas.experiments.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent

CONFIG = "configs/synthmv_tiny.yaml"
SEED, WINDOW, SIZE = 3, 5, 64
ONE, WORKER, TORCHRUN = "1 process (decode_workers=0)", "1 process (decode_workers=1)", \
    "torchrun 2 ranks (decode_workers=0)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shown(cmd: list) -> str:
    """The command as a user types it from the repository root (``python``, paths relative to it where inside)."""
    def rel(a: str) -> str:
        try:
            return str(Path(a).relative_to(ROOT)) if os.path.isabs(a) else a
        except ValueError:
            return a
    return shlex.join(["python" if a == sys.executable else rel(str(a)) for a in cmd])


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def _run(cmd: list, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"error: {what} failed (exit {proc.returncode}): {last}", file=sys.stderr)
        raise SystemExit(2)
    return proc


def make_data(syn: Path, videos: int) -> dict:
    """SynthMV videos in ``syn`` (made once per set of flags) -> description of the data."""
    cmd = [sys.executable, "-m", "datasets.synthmv", "--out", syn, "--num", videos, "--seed", SEED, "--window",
           WINDOW, "--size", SIZE]
    stamp, want = syn / "bench_preprocess_data.json", {"videos": videos, "seed": SEED, "window": WINDOW, "size": SIZE}
    manifest = syn / "vmas_manifest.jsonl"
    if not (stamp.is_file() and manifest.is_file() and json.loads(stamp.read_text()) == want):
        shutil.rmtree(syn, ignore_errors=True)
        _run(cmd, "SynthMV generation")
        stamp.write_text(json.dumps(want))
    rows = shards.read_curation_manifest(manifest)
    clips = sum(r.get("split", "train") == "train" for r in rows)
    return {"videos": videos, "train_clips": clips, "manifest": str(manifest),
            "description": f"{clips} SynthMV {WINDOW} s windows of {videos} videos of 10 s, {SIZE}² "
                           f"(seed {SEED})", "command": _shown(cmd)}


def _summaries(stdout: str) -> list:
    """Every JSON object the process(es) printed (torchrun: one summary per rank)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while (i := stdout.find("{", i)) >= 0:
        try:
            obj, end = dec.raw_decode(stdout, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict):
            out.append(obj)
        i = end
    return out


def measure(name: str, cmd: list, out: Path) -> dict:
    """Run ``cmd`` into a fresh ``out``: wall time, children's CPU time, clips written."""
    shutil.rmtree(out, ignore_errors=True)  # preprocess resumes: a finished folder would be skipped, not measured
    load0 = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = _run(cmd, name)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    summary = json.loads((out / "preprocess_summary.json").read_text())
    clips = summary["clips"]
    loops = sorted((s["rank"], s["seconds"]) for s in _summaries(proc.stdout) if "seconds" in s and "rank" in s)
    return {"command": _shown(cmd), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "clips": clips,
            "rejected": summary["rejected"], "shards": summary["shards"],
            "clips_per_s": round(clips / wall, 3), "clips_per_cpu_s": round(clips / cpu, 3) if cpu > 0 else None,
            "shard_loop_s_per_rank": [s for _, s in loops],
            "load_avg_1min_at_start": round(load0, 2), "load_avg_1min_at_end": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--videos", type=int, default=24, help="SynthMV videos of 10 s (two 5 s clips each)")
    p.add_argument("--work", default="outputs/bench_preprocess", help="data and shard folders (data reused)")
    p.add_argument("--clips-per-shard", type=int, default=6, help="data.clips_per_shard of every run")
    p.add_argument("--json", action="store_true", help="print only the JSON")
    args = p.parse_args(argv)
    if args.videos < 1 or args.clips_per_shard < 1:
        raise SystemExit("error: --videos and --clips-per-shard must be >= 1")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    data = make_data(work / "syn", args.videos)

    def preprocess(out: Path, decode_workers: int) -> list:
        return ["tools/preprocess.py", "--manifest", data["manifest"], "--config", CONFIG, "--splits", "train",
                "--out", out, "model.codec.pretrained=", "loss.motion_flow=farneback",
                f"data.clips_per_shard={args.clips_per_shard}", f"data.preprocess.decode_workers={decode_workers}"]

    outs = {ONE: work / "b0", WORKER: work / "b1", TORCHRUN: work / "b2"}
    cmds = {ONE: [sys.executable, *preprocess(outs[ONE], 0)],
            WORKER: [sys.executable, *preprocess(outs[WORKER], 1)],
            TORCHRUN: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                       _free_port(), *preprocess(outs[TORCHRUN], 0)]}
    runs = {}
    for name, cmd in cmds.items():
        if not args.json:
            print(f"{name}: {_shown(cmd)}", file=sys.stderr)
        runs[name] = measure(name, cmd, outs[name])
        if not args.json:
            r = runs[name]
            print(f"  {r['wall_s']} s wall, {r['cpu_s']} s CPU, {r['clips']} clips", file=sys.stderr)

    one, two = runs[ONE], runs[TORCHRUN]
    ratios = {"wall_speedup_torchrun_vs_1_process": round(one["wall_s"] / two["wall_s"], 3),
              "cpu_torchrun_over_1_process": round(two["cpu_s"] / one["cpu_s"], 3),
              "wall_speedup_torchrun_vs_1_process_with_worker": round(runs[WORKER]["wall_s"] / two["wall_s"], 3),
              "cpu_torchrun_over_1_process_with_worker": round(two["cpu_s"] / runs[WORKER]["cpu_s"], 3),
              # start-up excluded: the 1-process shard loop over the slower rank's
              "shard_loop_speedup_torchrun_vs_1_process": round(
                  one["shard_loop_s_per_rank"][0] / max(two["shard_loop_s_per_rank"]), 3)
              if one["shard_loop_s_per_rank"] and two["shard_loop_s_per_rank"] else None}
    compared = {}
    for ref in (ONE, WORKER):
        rep = shards.compare_shards(outs[TORCHRUN], outs[ref])
        compared[f"torchrun vs {ref}"] = {
            "shards": rep["shards"], "members": rep["members"], "identical": rep["identical"],
            "value_equal": len(rep["value_equal"]), "value_equal_members": rep["value_equal"],
            "motion_max_abs_diff": rep["motion_max_abs_diff"], "mismatches": rep["mismatches"]}
    mismatches = sum(len(c["mismatches"]) for c in compared.values())
    result = {
        "meta": {
            "what": "tools/preprocess.py throughput, 1 process (without / with a decode worker) vs torchrun "
                    "--nproc_per_node 2 (wall time incl. start-up; CPU = children's user + sys from getrusage, "
                    "torchrun's workers included), run one after the other; shards of torchrun compared member by "
                    "member with each 1-process run",
            "command": "python tools/bench_preprocess.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            **provenance(), "python": platform.python_version(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "omp_num_threads": _env()["OMP_NUM_THREADS"],
            "seeds": f"SynthMV --seed {SEED}; codec weights torch.manual_seed(0) in every process",
            "data": data["description"], "data_command": data["command"],
            "sizes": f"{CONFIG}: 48 frames x 32², 5 s at 32 kHz; random-weight codec of its architecture; "
                     f"Farneback motion; {args.clips_per_shard} clips/shard -> {one['shards']} shards",
            "clips_expected": data["train_clips"],
            "note": "wall-clock ratios on a shared machine mostly show the CPU share the runs got (load averages), "
                    "not scaling; each process pays its imports and librosa's first-call JIT",
        },
        "runs": runs,
        "ratios": ratios,
        "shards_compared": {"mismatches": mismatches, **compared},
    }
    print(json.dumps(result, indent=1))
    if mismatches:
        first = next(m for c in compared.values() for m in c["mismatches"])
        print(f"error: {mismatches} shard member(s) differ beyond the tolerances, e.g. {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
