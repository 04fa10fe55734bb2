"""Every DeepSpeed ZeRO stage and precision of one config, in one launch: loss curves to compare across world sizes.

(Over 150 lines: the launch of every ZeRO stage and precision, and the comparison with its derived tolerances.)

Each (stage, precision) pair trains a fresh model for ``--steps`` optimiser steps through the real solver
(``Solver(cfg).fit()``: DeepSpeed engine, EMA, atomic checkpoint, export) in the same processes, so the
launcher and DeepSpeed start once. Rank 0 writes ``{"world_size", "runs": {"z3_fp32": {"loss_curve", ...}}}``.

CPU (2 gloo ranks vs 1; what tests/test_distributed.py runs):

    NPROC=1 ENTRY=tools/check_zero.py bash train.sh configs/debug.yaml --out /tmp/z1.json
    NPROC=2 ENTRY=tools/check_zero.py bash train.sh configs/debug.yaml data.batch_size=1 --out /tmp/z2.json
    .venv/bin/python tools/check_zero.py --compare /tmp/z1.json /tmp/z2.json

GPU (the same check with NCCL and CUDA bf16 kernels; every visible GPU is a rank, e.g. on a lent device):

    ENTRY=tools/check_zero.py bash train.sh configs/debug.yaml --out /tmp/gpu.json && \
        .venv/bin/python tools/check_zero.py --compare /tmp/gpu.json /tmp/gpu.json

``--compare A B`` checks B against A stage by stage with the tolerances below (and every stage against ZeRO-0
fp32 of A) and exits 1 on a mismatch. Tolerances (justified in docs/training.md):

- ``FP32_TOL`` 5e-5 nats: fp32 runs differ only in summation order (gloo all-reduce of two halves vs one sum,
  ZeRO's flat buffers): ~1e-7 relative per gradient, which Adam turns into ~1e-6 of loss over a few steps.
- ``BF16_TOL`` 1 % of the loss: bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.39 %); weights, activations
  and the reduced gradients are rounded there, so curves drift by a few bf16 ulps; fp32 master weights keep the
  drift from compounding (measured on the debug preset: bf16 vs fp32 0.21 %, bf16 2 ranks vs 1 rank 0.006 %).
- Gains (``video_gain``, ``cond_gain``, ``beat_gain``) are differences of two validation losses: their bound is
  the sum of the two losses' bounds (see ``val_tolerance``), never a fraction of the small difference (bf16 on a
  CPU without AVX-512 moved a 0.0048-nat ``video_gain`` by 1.3 % while both losses moved by < 0.01 %).
- ``VAL_TOL`` 1e-5 nats: with ``data.val_shards``, validation of the initial weights (``val0``) is sharded over
  the ranks in whole batches of the 1-rank order and all-reduced, so it differs from one rank only in the order of
  the float64 sums (and ZeRO's flat fp32 copy of the weights).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import typing as tp
from pathlib import Path

FP32_TOL = 5e-5
VAL_TOL = 1e-5  # validation of identical weights on identical batches: float32 forward, float64 sums
BF16_TOL = 0.01  # relative


def run_all(config: str, overrides: tp.Sequence[str], stages: tp.Sequence[int], precisions: tp.Sequence[str],
            steps: int, work: Path, only: tp.Sequence[str] = ()) -> tp.Dict[str, tp.Any]:
    import torch

    from vmas.config import load_config
    from vmas.solvers.solver import Solver

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    runs: tp.Dict[str, tp.Any] = {}
    for precision in precisions:
        for stage in stages:
            name = f"z{stage}_{precision}"
            if only and name not in only:
                continue
            cfg = load_config(config, [*overrides, f"train.zero_stage={stage}", f"train.precision={precision}",
                                       "train.engine=deepspeed", "train.progress=false",
                                       "model.lm.cond_dropout=0", f"optim.max_steps={steps}",
                                       f"train.save_every={steps}", f"train.out_dir={work / name}"])
            cfg.train.deepspeed_config = ""  # the stage and precision under test, not a JSON's
            solver = Solver(cfg)
            # validation (sharded over ranks, through the engine) of the initial weights, equal on every layout
            val0 = solver.evaluate(cfg.train.eval_batches) if cfg.data.val_shards else None
            summary = solver.fit()
            runs[name] = {"loss_curve": summary["loss_curve"], "export": summary["export"],
                          "checkpoint": summary["checkpoint"], "val0": val0,
                          "weight_dtype": str(next(solver.engine.module.parameters()).dtype)}
            if rank == 0:
                print(f"{name}: {[round(x, 6) for x in summary['loss_curve']]}", flush=True)
            del solver
            gc.collect()
    return {"world_size": world, "device": "cuda" if torch.cuda.is_available() else "cpu", "steps": steps,
            "runs": runs}


def compare(ref: tp.Mapping[str, tp.Any], other: tp.Mapping[str, tp.Any]) -> tp.List[str]:
    """Mismatches of ``other`` against ``ref`` (same run name) and of every run against ZeRO-0 of ``ref``."""
    bad = []
    base = ref["runs"].get("z0_fp32")
    for name, run in other["runs"].items():
        pairs = [(name, ref["runs"].get(name))]
        if base is not None:
            pairs.append(("z0_fp32", base))
        for ref_name, r in pairs:
            if r is None:
                continue
            bf16 = "bf16" in name or "bf16" in ref_name
            for step, (a, b) in enumerate(zip(r["loss_curve"], run["loss_curve"]), 1):
                tol = BF16_TOL * abs(a) if bf16 else FP32_TOL
                if abs(a - b) > tol:
                    bad.append(f"{name} (world {other['world_size']}) vs {ref_name} (world {ref['world_size']}) "
                               f"step {step}: {b:.6f} vs {a:.6f} (|diff| {abs(a - b):.2e} > {tol:.2e})")
            val_r, val_o = r.get("val0") or {}, run.get("val0") or {}
            for key, a in val_r.items():  # same weights, same batches: only summation order (and bf16 rounding)
                b = val_o.get(key)
                tol = val_tolerance(val_r, key, bf16)
                if b is None or abs(a - b) > tol:
                    bad.append(f"{name} (world {other['world_size']}) vs {ref_name} val {key}: {b} vs {a} "
                               f"(tolerance {tol:.2e})")
    return bad


def val_tolerance(val: tp.Mapping[str, float], key: str, bf16: bool) -> float:
    """Allowed |difference| of validation quantity ``key`` between two runs (``val`` is the reference's ``val0``).

    A loss is rounded where it is computed, so its error bound is relative to the loss itself. A gain is the
    difference of two losses (``video_gain = ce_wrong_video - ce_video``, often 1e-3 of either): its rounding error
    is that of the two losses, |x| + |y| times the relative bound, not a fraction of the small difference. A clip
    count is exact.
    """
    from vmas.solvers.validation import GAINS

    if key == "clips":
        return 0.0
    rel = BF16_TOL if bf16 else 0.0
    if key in GAINS:
        worse, better = GAINS[key]
        scale = abs(val.get(worse, 0.0)) + abs(val.get(better, 0.0))
        return rel * scale + (0.0 if bf16 else 2 * VAL_TOL)
    return rel * abs(val[key]) if bf16 else VAL_TOL


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--stages", default="0,1,2,3")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--runs", default="", help="only these runs, e.g. z0_fp32,z3_bf16 (default: every pair)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", default=None, help="JSON report (rank 0)")
    p.add_argument("--work", default=None, help="run folders (default: a temporary folder)")
    p.add_argument("--compare", nargs=2, metavar=("REF", "OTHER"), help="compare two reports and exit")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_intermixed_args(argv)
    if args.compare:
        ref, other = (json.loads(Path(f).read_text()) for f in args.compare)
        bad = compare(ref, other)
        print("\n".join(bad) if bad else f"OK: {len(other['runs'])} runs within tolerance")
        return 1 if bad else 0
    if not args.config:
        p.error("CONFIG is required (or --compare)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="check_zero_"))
    report = run_all(args.config, args.overrides, [int(s) for s in args.stages.split(",")],
                     args.precisions.split(","), args.steps, work, [r for r in args.runs.split(",") if r])
    if int(os.environ.get("RANK", 0)) == 0:
        text = json.dumps(report, indent=1)
        if args.out:
            Path(args.out).write_text(text)
        print(text if not args.out else f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
