"""Manifest -> streamable tar shards (frames, EnCodec codes, beats, motion, beat weights, tags).

    python tools/preprocess.py --manifest data/disco_mv/manifest.jsonl --out data/disco_mv/shards \
        --config configs/paper.yaml --device cuda
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 tools/preprocess.py \
        --manifest data/disco_mv/manifest.jsonl --out data/disco_mv/shards --config configs/paper.yaml --device cuda
    sbatch --array=0-31 --gpus 1 --wrap "python tools/preprocess.py --manifest ... --out ... --device cuda"
    python tools/preprocess.py --manifest ... --out ... --config ... --merge   # rebuild the index from the
        # done-markers (the same --config: the shard plan depends on data.clips_per_shard)

Ranks come from torchrun, SLURM tasks, a SLURM array or --rank/--world-size (vmas.data.ranks); shard i belongs
to rank i mod world size, each rank pins the GPU of its local rank and writes only its own shards. Resumable:
re-run the same command after a crash or a kill; finished shards (``.done`` marker) are skipped and only the
shards that were in progress are rewritten; the index is written by the rank that finds every shard done.
The codec comes from ``model.codec`` (set ``model.codec.pretrained`` for real EnCodec codes), the motion curve
and beat weights from ``loss``, batching and decode workers from ``data.preprocess``.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys

from vmas.builders import build_codec
from vmas.config import load_config
from vmas.data import ranks, shards
from vmas.errors import ConfigError, VmasError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", required=True, help="manifest.jsonl from python -m datasets.disco_mv")
    p.add_argument("--out", required=True, help="shard folder")
    p.add_argument("--config", default=None, help="YAML preset (data sizes, codec, loss alignment settings)")
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits to write")
    p.add_argument("--workers", type=int, default=0,
                   help="CPU hosts without a launcher: N processes writing whole shards (0 = this process, with "
                        "device batches and data.preprocess.decode_workers decoding ahead)")
    p.add_argument("--device", default="cpu", help="device of the codec and RAFT (cuda = the GPU of the local rank)")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default: torchrun / SLURM env)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (with --rank)")
    p.add_argument("--merge", action="store_true",
                   help="only rebuild <split>.index.json from the done-markers (shows a partial run); exit 1 while "
                        "shards are missing")
    p.add_argument("overrides", nargs="*", default=[], help="config overrides key.sub=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.workers < 0:
            raise ConfigError(f"--workers {args.workers}: must be >= 0 (0 = this process)")
        cfg = load_config(args.config, args.overrides)
        splits = [s for s in args.splits.split(",") if s]
        if args.merge:
            state = shards.merge(args.manifest, args.out, cfg.data, splits)
            print(json.dumps(state, indent=1))
            if not state["complete"]:
                print(f"note: {state['shards'] - state['shards_done']} of {state['shards']} shards are not done: "
                      f"the index lists the finished ones; re-run the preprocessing command to finish",
                      file=sys.stderr)
            return 0 if state["complete"] else 1
        info = ranks.detect_rank(args.rank, args.world_size)
        device = ranks.pin_device(args.device, info)
        make_codec = functools.partial(build_codec, cfg.model.codec)  # picklable: built once per writer process
        enc, align = shards.default_factories(cfg.data, cfg.loss, make_codec, device)
        progress = lambda r: logging.info("%s: %d clips, %.1f MB, %.1f s", r["shard"], r["num_clips"],  # noqa: E731
                                          r["bytes"] / 1e6, r["seconds"])
        summary = shards.write_shards(args.manifest, args.out, cfg.data, enc, align, splits=splits,
                                      workers=args.workers, on_shard_done=progress, rank=info)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if not summary["complete"]:
        print(f"note: {info}: my shards are done; {summary['shards'] - summary['shards_done']} shards of other "
              f"ranks are not yet, the last rank to finish writes the index (or run --merge)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
