"""Memory estimate for a preset (default: paper), by calculation on the meta device: inference, or one training step.

    python tools/estimate_memory.py --config configs/paper.yaml --dtype bf16 [--json]          # inference
    python tools/estimate_memory.py --train --config configs/paper.yaml --batch 4 --world 32   # training, per rank
    python tools/estimate_memory.py --train --measure --config configs/synthmv_tiny.yaml --batch 2 \
        model.lm.cond_dropout=0.0 ...                                      # + the same step measured on this CPU

Training (``--train``): ``vmas.solvers.memory.estimate_training`` (weights, gradients, optimiser state, EMA,
activations traced on the meta device, backward peak; ZeRO stage / precision / checkpointing from the config or the
flags); ``--measure`` also runs two real fp32 steps on the CPU and reads the same components off the allocator
(``measure_training``), printing the estimate / measurement ratio (checked within 20 % by
tests/test_estimate_memory.py). Trailing ``key=value`` arguments override the config.

Inference (default):
Counts the real parameter tensors of the encoder, condition fuser, LM and codec (built on ``meta``: no memory, no
weights needed), then adds the LM's KV cache for one 10 s window with CFG (batch 2) and the largest video-encoder
activation. The CLAP text tower (~125 M params for laion/clap-htsat-unfused's text side) is added as a constant when
the tag branch is on. Weights dominate; the estimate is an upper bound for a single video at batch size 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmas.config import load_config
from vmas.errors import VmasError
from vmas.solvers.memory import BYTES, estimate_inference


def training(cfg, args) -> dict:
    """``--train``: the per-rank estimate (GiB), and with ``--measure`` the CPU measurement beside it."""
    from vmas.solvers.memory import estimate_training, measure_training

    est = estimate_training(cfg, args.batch, world_size=args.world, zero_stage=args.zero_stage,
                            precision=args.precision)
    gib = 1024 ** 3
    out = {f"{k}_gib": v / gib for k, v in est.items() if k != "meta"}
    out.update(est["meta"])
    if args.measure:
        meas = measure_training(cfg, args.batch)
        out["measured_mib"] = {k: round(v / 2 ** 20, 3) for k, v in meas.items()}
        out["estimated_mib"] = {k: round(est[k] / 2 ** 20, 3) for k in meas}
        out["ratio"] = {k: round(est[k] / meas[k], 3) for k in meas}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "paper.yaml"))
    p.add_argument("--dtype", default="bf16", choices=sorted(BYTES), help="inference weights' dtype")
    p.add_argument("--json", action="store_true")
    p.add_argument("--train", action="store_true", help="one training step instead of inference")
    p.add_argument("--batch", type=int, default=None, help="--train: micro-batch per rank (default data.batch_size)")
    p.add_argument("--world", type=int, default=1, help="--train: ranks the ZeRO partitions are divided over")
    p.add_argument("--zero-stage", type=int, default=None, choices=[0, 1, 2, 3], help="--train: default the config's")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="--train: default train.precision")
    p.add_argument("--measure", action="store_true", help="--train: also measure two fp32 steps on this CPU")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        est = training(cfg, args) if args.train else estimate_inference(cfg, args.dtype)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(est))
    else:
        for k, v in est.items():
            print(f"{k:26s} {v:.3f}" if isinstance(v, float) else f"{k:26s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
