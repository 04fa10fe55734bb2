"""Train VMAs from one config, or export the inference checkpoint of a training checkpoint.

The command line of ``tools/train.py`` (launched per rank by ``train.sh``); its docstring has the launch commands.
Commands compose: ``--resume`` alone continues the newest checkpoint of ``train.out_dir`` and ``--resume DIR`` the
given checkpoint (or run) folder, while a ``key=value`` after ``--resume`` stays an override; resuming a finished run
says so and exits 0 unless ``optim.max_steps`` was raised, in which case training continues to the new step.
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
    p.add_argument("config", nargs="?", default=None,
                   help="YAML preset, e.g. configs/debug.yaml (optional with --export: the checkpoint's own config)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--synthetic", action="store_true", help="random batches of the config's shapes (no shards)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="DIR",
                   help="continue a run: the newest checkpoint in train.out_dir, or the given checkpoint folder (or "
                        "run folder); a key=value after it stays an override")
    p.add_argument("--export", metavar="CKPT_DIR", default=None,
                   help="only write the inference checkpoint of this training checkpoint, then exit")
    p.add_argument("--out", default=None, help="output file of --export (default: <out_dir>/model.pt)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    args = p.parse_intermixed_args(_explicit_resume(sys.argv[1:] if argv is None else argv))
    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)  # no preset: the first positional is an override
        args.config = None
    if args.config is None and args.export is None:
        p.error("the following arguments are required: config (a YAML preset, e.g. configs/debug.yaml; only "
                "--export CKPT_DIR may leave it out)")
    return args


def _explicit_resume(argv: tp.Sequence[str]) -> tp.List[str]:
    """``--resume`` followed by an override (``optim.max_steps=20``), a YAML preset or another flag becomes
    ``--resume=auto``: argparse would otherwise take that word as the checkpoint folder."""
    out = list(argv)
    for i, tok in enumerate(out):
        nxt = out[i + 1] if i + 1 < len(out) else None
        if tok == "--resume" and nxt is not None and not Path(nxt).is_dir() and (
                nxt.startswith("-") or "=" in nxt or nxt.endswith((".yaml", ".yml"))):
            out[i] = "--resume=auto"
    return out


def _resume_folder(resume: str, out_dir: Path) -> tp.Optional[Path]:
    """The checkpoint folder ``--resume`` continues from (None: nothing to resume, a fresh start)."""
    from vmas.errors import CheckpointError
    from vmas.solvers.checkpoint import latest_checkpoint

    if resume == "auto":
        return latest_checkpoint(out_dir / "checkpoints")
    folder = Path(resume)
    if (folder / "checkpoints").is_dir():  # a run folder: its newest checkpoint
        found = latest_checkpoint(folder / "checkpoints")
        if found is None:
            raise CheckpointError(f"--resume {folder}: the run folder holds no complete checkpoint")
        return found
    return folder  # the solver checks it (meta.json) with its own one-line error


def _finished(folder: tp.Optional[Path], max_steps: int) -> tp.Optional[int]:
    """The step of ``folder`` when it already reached ``max_steps`` (None = there is training left to do)."""
    meta = folder / "meta.json" if folder is not None else None
    if meta is None or not meta.is_file():
        return None
    step = int(json.loads(meta.read_text()).get("step", 0))
    return step if step >= max_steps else None


def _refuse_synthetic_beside_shards(overrides: tp.Sequence[str]) -> None:
    """``--synthetic`` with shards named on the same command line: one of them would be ignored (issue 36)."""
    from vmas.config import SHARD_KEYS
    from vmas.errors import ConfigError

    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() in {f"data.{k}" for k in SHARD_KEYS} and value.strip() not in ("", "null", "''", '""'):
            raise ConfigError(f"--synthetic and {item} are both given (synthetic batches would replace the shards): "
                              "drop --synthetic to train on the shards, or the shards for a synthetic smoke run")


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

        if args.config is None:  # --export alone: a training checkpoint carries its config (meta.json)
            from vmas.solvers.checkpoint import read_meta

            cfg = load_config(None, args.overrides, base=read_meta(Path(args.export))["config"])
        else:
            cfg = load_config(args.config, args.overrides)
        if cfg.train.init_from and args.config is not None:  # fine-tuning: the preset is layered on the base model's own stored config
            from vmas.solvers.export import stored_config

            cfg = load_config(args.config, args.overrides, base=stored_config(cfg.train.init_from))
        if args.synthetic:
            _refuse_synthetic_beside_shards(args.overrides)
            cfg.train.synthetic = True
        cfg = config_from_dict(config_to_dict(cfg))  # re-validate after CLI flags
        if rank == 0 and not args.export:
            from vmas.solvers.checks import unread_overrides

            for line in unread_overrides(args.overrides):
                print(f"warning: {line}", file=sys.stderr)
        if args.export:
            from vmas.solvers.export import export_checkpoint

            out = Path(args.out) if args.out else Path(cfg.train.out_dir) / "model.pt"
            print(f"exported {export_checkpoint(cfg, Path(args.export), out)}")
            return 0
        resume: tp.Union[bool, str] = False
        if args.resume is not None:
            folder = _resume_folder(args.resume, Path(cfg.train.out_dir))
            done = _finished(folder, cfg.optim.max_steps)
            if done is not None:
                if rank == 0:
                    print(f"{folder} is finished: step {done} of optim.max_steps={cfg.optim.max_steps}; nothing to "
                          f"do (pass optim.max_steps=N with N > {done} to train on)", file=sys.stderr)
                return 0
            resume = str(folder) if folder is not None else True
        from vmas.solvers.solver import Solver

        summary = Solver(cfg, resume=resume).fit()
    except VmasError as err:
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}))
    return 0
