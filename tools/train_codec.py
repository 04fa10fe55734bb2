"""Train a small EnCodec (same architecture as MusicGen's, small widths) on a folder of audio, on the CPU.

Launch (SynthMV audio, 3700 steps: ~8 minutes on 2 idle cores):

    .venv/bin/python tools/train_codec.py --config configs/codec_synthmv.yaml \
        --audio-dir data/synthmv/train --out runs/codec_synthmv/codec.pt --steps 3700

Smoke run on procedurally generated tones and clicks (no data needed):

    .venv/bin/python tools/train_codec.py --config configs/codec_synthmv.yaml --synthetic 32 \
        --out /tmp/codec.pt --steps 20

Thin wrapper over :func:`vmas.codec_training.train_codec` (losses and scores are described there).

Losses: multi-scale log-mel L1 + waveform L1 + RVQ commitment; codebooks are EMA-updated with k-means init and
dead-code replacement (the ``encodec`` quantizer). No adversarial terms: on simple synthetic music the
reconstruction losses suffice and they keep a CPU run short. Training uses random crops of ``data.clip_seconds``.
At the end the held-out files are encoded/decoded whole and scored: log-mel distance and onset F1 (librosa onsets,
+-50 ms) of reconstructions vs originals. The output file (kwargs + state dict + config + metrics) loads with
``vmas.models.codec.load_codec(path)`` or as ``model.codec.pretrained``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing as tp
from pathlib import Path

# Spinning OpenMP workers make a shared, oversubscribed CPU ~10x slower (measured here); sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from vmas.codec_training import load_dataset, train_codec  # noqa: E402
from vmas.config import load_config  # noqa: E402
from vmas.errors import DataError, VmasError  # noqa: E402


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="configs/codec_synthmv.yaml", help="preset with model.codec, data, optim")
    p.add_argument("--audio-dir", help="folder of wav/mp4/... files (searched recursively)")
    p.add_argument("--synthetic", type=int, default=0, help="use N procedural 5 s clips instead of --audio-dir")
    p.add_argument("--out", required=True, help="output codec file (load with vmas.models.codec.load_codec)")
    p.add_argument("--steps", type=int, default=None, help="max steps (default: optim.max_steps)")
    p.add_argument("--minutes", type=float, default=None,
                   help="also stop after this wall-clock time (debugging only: the codec then depends on the "
                        "machine's load; published codecs use --steps)")
    p.add_argument("--max-files", type=int, default=2000)
    p.add_argument("--eval-clips", type=int, default=16, help="held-out clips (<= 10%% of the data)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default); 1 is fastest on a "
                   "CPU shared with other jobs")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object at the end")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = p.parse_args(argv)
    try:
        if not args.audio_dir and not args.synthetic:
            raise DataError("give --audio-dir DIR (e.g. SynthMV audio) or --synthetic N")
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = load_config(args.config, args.overrides)
        clips, names = load_dataset(args.audio_dir, args.synthetic, cfg.model.codec.sample_rate, cfg.train.seed,
                                    args.max_files)
        steps = args.steps if args.steps is not None else cfg.optim.max_steps
        result = train_codec(cfg, clips, names, Path(args.out), steps, args.minutes, args.eval_clips,
                       log=(lambda s: print(s, file=sys.stderr)) if args.json else print)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result["budget"] == "minutes":
        print(f"warning: stopped by --minutes after {result['steps']} of {steps} steps: this codec depends on the "
              "machine's load; do not publish numbers made with it", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
