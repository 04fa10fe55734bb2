"""Train VMAs from one config (the solver is ``vmas.solvers.solver.Solver``).

Smoke run on this machine (CPU, synthetic batches, < 3 min; writes runs/debug/model.pt):

    bash train.sh configs/debug.yaml

One process without the launcher (plain PyTorch engine, no DeepSpeed):

    .venv/bin/python tools/train.py configs/debug.yaml --synthetic train.engine=torch train.out_dir=/tmp/dbg

Paper run, 4 nodes x 8 GPUs (see docs/training.md for SLURM and hostfile variants):

    HOSTFILE=hostfile bash train.sh configs/paper.yaml
    bash train.sh configs/paper.yaml --resume             # continue from the newest checkpoint

Export the inference checkpoint of a training checkpoint (EMA weights + config + codec, one file):

    .venv/bin/python tools/train.py configs/paper.yaml --export runs/paper/checkpoints/step_00200000 --out vmas.pt

Overrides are ``key.sub=value`` (YAML values), e.g. ``optim.max_steps=20 data.batch_size=1``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from vmas.errors import VmasError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", help="YAML preset, e.g. configs/debug.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--synthetic", action="store_true", help="random batches of the config's shapes (no shards)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue a run: newest checkpoint in train.out_dir, or the given checkpoint folder")
    p.add_argument("--export", metavar="CKPT_DIR", default=None,
                   help="only write the inference checkpoint of this training checkpoint, then exit")
    p.add_argument("--out", default=None, help="output file of --export (default: <out_dir>/model.pt)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    return p.parse_intermixed_args(argv)


def export_checkpoint(cfg, folder: Path, out: Path) -> Path:
    """Inference export from a training checkpoint folder, without DeepSpeed (reads ema.pt + the config)."""
    import torch

    from vmas.builders import build_codec
    from vmas.config import config_to_dict
    from vmas.solvers import checkpoint as ckpt

    meta = ckpt.read_meta(folder)
    ema = torch.load(folder / "ema.pt", map_location="cpu", weights_only=False)
    codec = build_codec(cfg.model.codec)
    prefix = "model."  # ema.pt tracks VMAS itself: no prefix expected, but accept an engine-wrapped one
    weights = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in ema["shadow"].items()}
    return ckpt.export_inference(out, config_to_dict(cfg), weights, codec.state_dict(),
                                 {"step": meta["step"], "ema_decay": ema["decay"], "ema_every": ema["every"],
                                  "ema_updates": ema["num_updates"], "note": f"{cfg.name} step {meta['step']} (EMA)"})


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rank = int(os.environ.get("RANK", 0))
    try:
        from vmas.config import config_from_dict, config_to_dict, load_config

        cfg = load_config(args.config, args.overrides)
        if args.synthetic:
            cfg.train.synthetic = True
        cfg = config_from_dict(config_to_dict(cfg))  # re-validate after CLI flags
        if args.export:
            out = Path(args.out) if args.out else Path(cfg.train.out_dir) / "model.pt"
            print(f"exported {export_checkpoint(cfg, Path(args.export), out)}")
            return 0
        from vmas.solvers.solver import Solver

        solver = Solver(cfg, resume=args.resume if args.resume is not None else False)
        summary = solver.fit()
    except VmasError as err:
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
