"""Train VMAs from one config, or export the inference checkpoint of a training checkpoint.

The command line of ``tools/train.py`` (launched per rank by ``train.sh``); its docstring has the launch commands.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing as tp
from pathlib import Path

from vmas.errors import VmasError


def parse_args(argv: tp.Optional[tp.Sequence[str]] = None) -> argparse.Namespace:
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


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    """Exit code 0 on success, 2 on a :class:`VmasError` (one line on stderr from rank 0, no traceback)."""
    args = parse_args(argv)
    # training never downloads: text encoders and pretrained weights come from the local cache or a path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rank = int(os.environ.get("RANK", 0))
    try:
        from vmas.config import config_from_dict, config_to_dict, load_config

        cfg = load_config(args.config, args.overrides)
        if cfg.train.init_from:  # fine-tuning: the preset is layered on the base model's own stored config
            from vmas.solvers.export import stored_config

            cfg = load_config(args.config, args.overrides, base=stored_config(cfg.train.init_from))
        if args.synthetic:
            cfg.train.synthetic = True
        cfg = config_from_dict(config_to_dict(cfg))  # re-validate after CLI flags
        if args.export:
            from vmas.solvers.export import export_checkpoint

            out = Path(args.out) if args.out else Path(cfg.train.out_dir) / "model.pt"
            print(f"exported {export_checkpoint(cfg, Path(args.export), out)}")
            return 0
        from vmas.solvers.solver import Solver

        summary = Solver(cfg, resume=args.resume if args.resume is not None else False).fit()
    except VmasError as err:
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}))
    return 0
