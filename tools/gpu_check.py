"""One device check before a long job: the preset's training step, generation, encoder and codec on this machine.

On one GPU node (about 5 minutes for the paper preset on an 80 GB GPU; writes docs/results/gpu_check.json):

    python tools/gpu_check.py --json

What it runs (random weights: timings and memory do not depend on them; measurements in
``vmas.experiments.device_check``): the training step with DeepSpeed ZeRO-2, bf16 and activation checkpointing at
the preset's micro-batch (step time, audio tokens/s, MFU against the GPU's bf16 peak, peak memory against
``tools/estimate_memory.py --train``), one 10 s window with CFG per decoder (today's cached loop, the static step,
its compiled and CUDA-graph forms: steps/s and wall time), the encoder on 96 frames and the codec decode of 10 s.

On a CPU the same code runs at debug size (what tests/test_gpu_check.py does), writing the same keys:

    python tools/gpu_check.py --config configs/debug.yaml --out /tmp/gpu_check.json train.engine=torch
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from vmas.config import load_config
from vmas.errors import VmasError
from vmas.experiments import device_check
from vmas.experiments.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
# the setting the check measures: the preset's own micro-batch, one optimiser step per micro-batch, synthetic clips
CHECK = ["train.synthetic=true", "train.grad_accum=1", "train.deepspeed_config=", "train.progress=false"]
GPU = ["train.engine=deepspeed", "train.zero_stage=2", "train.precision=bf16"]


def versions() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    try:
        import deepspeed

        out["deepspeed"] = deepspeed.__version__
    except ImportError:
        out["deepspeed"] = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "paper.yaml"))
    p.add_argument("--out", default=None, help="JSON path (default docs/results/gpu_check.json on a GPU)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    p.add_argument("--repeats", type=int, default=1, help="timed generations per decoder (after one warm-up)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: train, generate")
    p.add_argument("--decoders", default="", help="comma list of decoders to time (default: every one offered)")
    p.add_argument("--json", action="store_true", help="also print the result on stdout")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (after the check's own)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    out = Path(args.out) if args.out else (ROOT / "docs" / "results" / "gpu_check.json" if cuda else None)
    try:
        cfg = load_config(args.config, [*CHECK, *(GPU if cuda else []), *args.overrides])
        if not cuda and cfg.model.lm.dim >= 1024:
            raise VmasError(f"{args.config}: no GPU here, and this preset is paper-sized; on a CPU run it at debug "
                            "size: --config configs/debug.yaml train.engine=torch")
        if out is None:
            raise VmasError("no GPU here: give --out FILE for the CPU check (docs/results/gpu_check.json is for GPUs)")
        skip = {s for s in args.skip.split(",") if s}
        result = {"train": None if "train" in skip else device_check.train_check(cfg, device, args.steps),
                  "generate": None if "generate" in skip else device_check.generate_check(
                      cfg, device, cfg.generation.cfg, args.repeats, [d for d in args.decoders.split(",") if d])}
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    result["meta"] = {**provenance(), "device": name, "bf16_peak_tflops": (device_check.bf16_peak(device) or 0) / 1e12
                      or None, **versions(), "config": args.config, "overrides": list(args.overrides),
                      "command": "python tools/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.json")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(json.dumps(result) if args.json else f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
