"""Music without video -> music-only shards (issue 25): the tag branch trains on tagged music that has no video.

    python tools/preprocess_music.py data/my_music --out data/music --config configs/paper.yaml --workers 4
    python tools/preprocess_music.py songs.txt --out data/music --config configs/debug.yaml --no-vocal-removal \
        --tags "instrumental" --caption-llm /models/mistral-7b-instruct

Inputs: audio folders (searched recursively), ``.txt`` lists of audio paths, or audio files (anything PyAV/ffmpeg
decodes). Tags per file: ``<stem>.tags.txt`` / ``<stem>.json`` sidecars, else a ``<stem>.caption.txt`` caption
(through the LLM of ``--caption-llm`` and the tag cleaner, or the cleaner alone), else the file's embedded genre and
title; ``--tags`` are added to every file's. Writes ``<out>/manifest.jsonl``, ``rejects.jsonl``, ``summary.json``
(and ``audio/`` with Demucs) and the shards ``<out>/shards/<split>-NNNNNN.tar`` (no frames; resumable: a re-run skips
finished shards). Train with ``data.unpaired_shards=<out>/shards/train-*.tar data.unpaired_fraction=0.3``.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

from vmas.builders import build_codec
from vmas.config import load_config
from vmas.data import shards
from vmas.data.music_only import curate_music_folder, discover_music
from vmas.errors import VmasError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="audio folders, .txt lists of audio files, or audio files")
    p.add_argument("--out", required=True, help="output folder (manifest, rejects, summary, shards/)")
    p.add_argument("--config", default=None, help="YAML preset (clip length, codec, curation, loss beat settings)")
    p.add_argument("--tags", default="", help="comma-separated tags added to every file's own")
    p.add_argument("--caption-llm", default="", help="transformers LLM (name or folder) turning <stem>.caption.txt "
                                                     "captions into tags (default: the tag cleaner alone)")
    p.add_argument("--no-vocal-removal", action="store_true",
                   help="keep the audio as is (needed when demucs or its weights are not installed)")
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits to write as shards")
    p.add_argument("--workers", type=int, default=0, help="shard-writing processes (0 = this process)")
    p.add_argument("--device", default="cpu", help="device of Demucs and the codec")
    p.add_argument("overrides", nargs="*", default=[], help="config overrides key.sub=value")
    args, rest = p.parse_known_args(argv)
    args.overrides += [r for r in rest if "=" in r]  # overrides may follow the inputs
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        overrides = list(args.overrides) + (["data.curation.vocal_removal=false"] if args.no_vocal_removal else [])
        cfg = load_config(args.config, overrides)
        caption_fn = None
        if args.caption_llm:
            from vmas.tags.autotag import HFCausalLM, _load, caption_to_tags

            llm = _load("llm", args.caption_llm, lambda: HFCausalLM(args.caption_llm, args.device))
            caption_fn = functools.partial(caption_to_tags, llm=llm, max_tags=cfg.model.tags.max_tags)
        extra = [t.strip() for t in args.tags.split(",") if t.strip()]
        items = discover_music(args.inputs, caption_fn, extra)
        out = Path(args.out)
        curated = curate_music_folder(items, out, cfg.data, device=args.device)
        enc, align = shards.default_factories(cfg.data, cfg.loss, functools.partial(build_codec, cfg.model.codec),
                                              args.device)
        written = shards.write_shards(out / "manifest.jsonl", out / "shards", cfg.data, enc, align,
                                      splits=[s for s in args.splits.split(",") if s], workers=args.workers)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"curation": curated, "shards": written}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
