"""Manifest -> streamable tar shards (frames, EnCodec codes, beats, motion, beat weights, tags).

    python tools/preprocess.py --manifest data/disco_mv/manifest.jsonl --out data/disco_mv/shards \
        --config configs/paper.yaml --workers 8
    python tools/preprocess.py --manifest data/dbg/manifest.jsonl --out data/dbg/shards --config configs/debug.yaml \
        loss.motion_flow=farneback

Resumable: re-run the same command after a crash or a kill; finished shards (those with a ``.done`` marker) are
skipped and only the shards that were in progress are rewritten. Prints a summary with clips/s and bytes/clip.
The codec comes from ``model.codec`` (set ``model.codec.pretrained`` for real EnCodec codes), the motion curve
and beat weights from ``loss`` (``motion_flow``, ``beat_window``, ``beat_delta``, ``beat_lambda``).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys

from vmas.builders import build_codec
from vmas.config import load_config
from vmas.data import shards
from vmas.errors import VmasError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", required=True, help="manifest.jsonl from python -m datasets.disco_mv")
    p.add_argument("--out", required=True, help="shard folder")
    p.add_argument("--config", default=None, help="YAML preset (data sizes, codec, loss alignment settings)")
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits to write")
    p.add_argument("--workers", type=int, default=0, help="processes, one shard at a time each (0 = this process)")
    p.add_argument("--device", default="cpu", help="device of the codec and RAFT")
    p.add_argument("overrides", nargs="*", default=[], help="config overrides key.sub=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        make_codec = functools.partial(build_codec, cfg.model.codec)  # picklable: built once per worker
        enc, align = shards.default_factories(cfg.data, cfg.loss, make_codec, args.device)
        progress = lambda r: logging.info("%s: %d clips, %.1f MB, %.1f s", r["shard"], r["num_clips"],  # noqa: E731
                                          r["bytes"] / 1e6, r["seconds"])
        summary = shards.write_shards(args.manifest, args.out, cfg.data, enc, align,
                                      splits=[s for s in args.splits.split(",") if s], workers=args.workers,
                                      on_shard_done=progress)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
