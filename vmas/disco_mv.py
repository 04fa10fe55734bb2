"""DISCO-MV-style curation CLI (SPEC §6): source videos -> manifest.jsonl + rejects.jsonl + summary.json.

Nothing is downloaded: point it at the videos you have (folders, ``.txt`` lists of paths, ``.jsonl`` lists with
``video``/``id``/``tags``). Then turn the manifest into shards with ``tools/preprocess.py``.

    python -m vmas.disco_mv data/raw_videos --out data/disco_mv --config configs/paper.yaml --workers 8
    python -m vmas.disco_mv list.txt --out data/dbg --config configs/debug.yaml --no-vocal-removal \
        --split-file splits.json data.curation.embedder=histogram
    torchrun --nnodes 4 --nproc_per_node 8 ... -m vmas.disco_mv data/raw --out data/disco_mv --device cuda

It is part of the installed package, so it runs from any folder (``python -m datasets.disco_mv``, the same command
under the repository's ``datasets/``, only from the repository root).

Bad inputs never stop the run: each is skipped with a reason in ``rejects.jsonl`` and counted in the summary.
A run that keeps no video, or drops more than ``data.curation.max_reject_share`` of them for one reason, says so
on stderr and exits 3 (``--accept-drops`` exits 0). Ranks come from torchrun / SLURM / ``--rank --world-size``
(:mod:`vmas.data.ranks`): each rank curates its own parts of the input (``data.curation.videos_per_part``
videos each, with done-markers, so a re-run redoes only unfinished parts) and the last to finish writes the
manifest; ``--merge`` writes it from the finished parts by hand.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from vmas.config import load_config
from vmas.data import curation, ranks
from vmas.errors import ConfigError, VmasError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vmas.disco_mv", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="video folders, .txt/.jsonl lists of videos, or video files")
    p.add_argument("--out", required=True, help="output folder (manifest.jsonl, rejects.jsonl, summary.json, audio/)")
    p.add_argument("--config", default=None, help="YAML preset whose data section is used (e.g. configs/paper.yaml)")
    p.add_argument("--no-vocal-removal", action="store_true",
                   help="keep the original audio track (needed when demucs or its weights are not installed)")
    p.add_argument("--embedder", default=None, help="override data.curation.embedder (pixels, histogram, timm:NAME, "
                                                    "torchvision:NAME)")
    p.add_argument("--embedder-weights", default=None, help="local weights file for a timm/torchvision embedder")
    p.add_argument("--split-file", default=None, help='JSON {"val": [ids], "test": [ids]} of hand-picked splits')
    p.add_argument("--workers", type=int, default=0, help="processes (0 = this process)")
    p.add_argument("--device", default="cpu", help="device of the embedder and Demucs (cuda = the local rank's GPU)")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default: torchrun / SLURM env)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (with --rank)")
    p.add_argument("--merge", action="store_true", help="only join the finished parts into manifest.jsonl (exit 1 "
                                                        "while parts are missing)")
    p.add_argument("--accept-drops", action="store_true",
                   help="exit 0 even when nothing is kept or one reason drops most videos")
    p.add_argument("overrides", nargs="*", default=[], help="config overrides key.sub=value (after the inputs)")
    args, rest = p.parse_known_args(argv)
    # overrides look like paths to argparse; anything with '=' among the inputs is an override.
    args.overrides = [a for a in args.inputs + rest if "=" in a] + args.overrides
    args.inputs = [a for a in args.inputs if "=" not in a]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        overrides = list(args.overrides)
        if args.no_vocal_removal:
            overrides.append("data.curation.vocal_removal=false")
        if args.embedder:
            overrides.append(f"data.curation.embedder={args.embedder}")
        if args.embedder_weights:
            overrides.append(f"data.curation.embedder_weights={args.embedder_weights}")
        cfg = load_config(args.config, overrides)
        for item in args.overrides:  # curation reads the data section only: anything else would look applied
            if not item.split("=", 1)[0].strip().startswith("data."):
                print(f"warning: {item.split('=', 1)[0]} has no effect on curation (it reads data.*)",
                      file=sys.stderr)
        if args.workers < 0:
            raise ConfigError(f"--workers {args.workers}: must be >= 0 (0 = this process)")
        split_overrides = curation.load_split_file(args.split_file) if args.split_file else None
        items = curation.discover_inputs(args.inputs)
        if args.merge:
            summary = curation.merge_parts(items, args.out, cfg.data, split_overrides)
            print(json.dumps(summary, indent=1))
            return 0 if summary["complete"] else 1
        info = ranks.detect_rank(args.rank, args.world_size)
        device = ranks.pin_device(args.device, info)
        if args.workers == 0:  # fail fast (one clear line) before touching any video
            cur = cfg.data.curation
            embedder = curation.build_frame_embedder(cur.embedder, cur.embedder_weights, device, cur.variety_threshold)
            remover = curation.build_vocal_remover(cfg.data.curation, device)
        else:
            embedder = remover = None
            curation.build_vocal_remover(cfg.data.curation, "cpu")  # same check, workers build their own
        step = max(1, len(items) // 20)
        summary = curation.curate(items, args.out, cfg.data, embedder, remover, split_overrides, args.workers,
                                  device, progress=lambda n, t: n % step == 0 and logging.info("%d/%d videos", n, t),
                                  rank=info)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if not summary["complete"]:
        print(f"note: {info}: my parts are done; the last rank to finish writes manifest.jsonl (or run --merge)",
              file=sys.stderr)
    elif summary.get("problem"):
        print(f"error: {summary['problem']} (manifest.jsonl, rejects.jsonl and summary.json are written; "
              f"--accept-drops to exit 0)", file=sys.stderr)
        return 0 if args.accept_drops else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
