"""The paper's ablation in miniature, on SynthMV where the truth is known (issues 10, 17).

(Over 150 lines for its docstring and flags; training, caches, scores and spreads are ``vmas.experiments``'.)

Trains (or reuses) the variants with the same step budget for each training seed, then generates music for
held-out SynthMV videos and scores it (scores of a finished (variant, seed) are cached beside its model, keyed by
the test set and the generation settings, so an interrupted benchmark continues where it stopped):

- ``ar_only``      plain autoregressive loss (``loss.contrastive_weight=0``, ``loss.beat_lambda=1``)
- ``contrastive``  + video-music contrastive loss (``loss.beat_lambda=1``)
- ``full``         + contrastive + beat-weighted loss (``configs/synthmv_tiny.yaml`` as is)
- ``beat_only``    beat-weighted loss without the contrastive loss (``loss.contrastive_weight=0``)
- ``random``       baseline: the real music of a different held-out clip (right kind of audio, wrong video)
- ``codec_ceiling``   the clip's own music encoded and decoded by the codec: the best any LM on these codes can do

Scores per variant: MV-Align (``vmas.metrics.MVAlign``, Farneback, AV-Align IoU), onset-to-event F1 (±50 ms, the
clip's labelled visual events), class accuracy (SynthMV classifier on the generated audio vs the video's class),
video->music retrieval R@1 over the held-out pairs (model's contrastive heads; ``ar_only`` has none, so it is
scored with freshly initialised heads = chance, and says so).

    python tools/synthmv_benchmark.py --json                 # train missing variants, generate, score
    python tools/synthmv_benchmark.py --json --retrain       # force training
    python tools/synthmv_benchmark.py --json --train-seeds 0,1,2 --config configs/synthmv_irregular.yaml \
        --test-manifest data/synthmv_irregular/test/vmas_manifest.jsonl --out runs/synthmv_irregular/bench

With several training seeds each metric is ``{mean, std}`` over the training seeds of the per-model means over
sampling seeds (``runs``: those per-model means; ``sampling_std``: the mean over models of the std over sampling
seeds). With one training seed the spread is over sampling seeds, as before.
Prerequisites (see configs/synthmv_tiny.yaml): SynthMV train/test folders, the SynthMV codec, train shards.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing as tp
from pathlib import Path

import torch

from vmas.config import load_config
from vmas.evaluation import generate_windows
from vmas.experiments import aggregate, scoring
from vmas.experiments.runs import TrainJob, cached_scores, run_dir, train_pool

ROOT = Path(__file__).resolve().parent.parent  # default paths of the repo's configs, data and runs

VARIANTS: tp.Dict[str, tp.List[str]] = {
    "ar_only": ["loss.contrastive_weight=0.0", "loss.beat_lambda=1.0"],
    "contrastive": ["loss.beat_lambda=1.0"],
    "full": [],
    "beat_only": ["loss.contrastive_weight=0.0"],
}


def score_model(path: Path, clips: tp.Sequence[dict], args, shared: dict) -> tp.Dict[str, tp.Any]:
    """Generate with every sampling seed and score one trained model (cached beside it unless ``--rescore``)."""
    from vmas.hub import load_model

    def compute() -> tp.Dict[str, tp.Any]:
        pipe = load_model(path)
        judge(pipe, shared)
        sr, c = pipe.codec.sample_rate, pipe.config
        onsets = (scoring.oracle_onsets(clips, c.data.clip_seconds, sr, pipe.codec.frame_rate)
                  if c.model.lm.onset_oracle else None)
        cfg = pipe.spec.sampling.cfg if args.cfg is None else args.cfg
        runs = [scoring.score(generate_windows(pipe, clips, seed=args.seed + k, cfg_scale=cfg, top_k=args.top_k,
                                               beat_from_video=args.beat_from_video, onsets=onsets),
                              sr, clips, shared["judge"][0]) for k in range(args.sample_seeds)]
        result = aggregate.over_sampling_seeds(runs)
        r1, r1_codes, note = scoring.retrieval_r1(pipe, clips)
        result.update({"r_at_1": r1, "r_at_1_onehot_codes": r1_codes, "r_at_1_note": note})
        return result

    key = {"clips": [c["id"] for c in clips], "videos": [c["video"] for c in clips], "seed": args.seed,
           "sample_seeds": args.sample_seeds, "cfg": args.cfg, "top_k": args.top_k,
           "beat_from_video": args.beat_from_video}
    return cached_scores(path, key, compute, args.rescore)


def judge(pipe, shared: dict) -> None:
    """The class judge and codec round trip, made once (every model shares the config's codec)."""
    if "judge" not in shared:
        shared.update(judge=scoring.synthmv_judge(pipe), sr=pipe.codec.sample_rate,
                      seconds=pipe.config.data.clip_seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "synthmv_tiny.yaml"))
    p.add_argument("--test-manifest", default=str(ROOT / "data" / "synthmv" / "test" / "vmas_manifest.jsonl"))
    p.add_argument("--out", default=str(ROOT / "runs" / "synthmv" / "bench"))
    p.add_argument("--variants", default="ar_only,contrastive,full")
    p.add_argument("--steps", type=int, default=1200, help="optimiser steps per variant (same for all)")
    p.add_argument("--clips", type=int, default=36, help="held-out clips to generate for")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed (and the random baseline's permutation)")
    p.add_argument("--train-seeds", default="0", help="comma-separated training seeds (train.seed) per variant")
    p.add_argument("--jobs", type=int, default=3, help="training processes at once (one thread each)")
    p.add_argument("--sample-seeds", type=int, default=3,
                   help="generate with this many sampling seeds (seed, seed+1, ...) and report mean and std")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's generation.cfg)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--rescore", action="store_true", help="ignore cached scores of finished models")
    p.add_argument("--train-only", action="store_true", help="train the missing runs, then stop")
    p.add_argument("--no-train", action="store_true",
                   help="score finished runs only (e.g. while others still train); error if one is missing")
    p.add_argument("--beat-from-video", action="store_true",
                   help="models with a beat condition: generate with the grid fitted to each video's motion peaks")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every variant")
    args = p.parse_args(argv)
    # all cores, unless OMP_NUM_THREADS says otherwise (several scorers at once: 1 thread each is much faster than
    # oversubscribed intra-op threads)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    names = [n for n in args.variants.split(",") if n]
    if [n for n in names if n not in VARIANTS]:
        p.error(f"unknown variants {[n for n in names if n not in VARIANTS]}; choose from {sorted(VARIANTS)}")
    seeds = [int(x) for x in args.train_seeds.split(",") if x != ""]
    jobs = {(n, s): TrainJob(run_dir(args.out, n, s), args.config, (f"optim.max_steps={args.steps}",
                                                                    f"train.seed={s}", *VARIANTS[n], *args.overrides))
            for n in names for s in seeds}
    missing = [str(j.out) for j in jobs.values() if not j.model.exists()]
    if args.no_train and missing:
        raise SystemExit(f"--no-train: no model.pt in {', '.join(missing)}; train them first")
    t0 = time.time()
    train_pool(jobs.values(), args.jobs, args.retrain, poll_s=2.0)
    train_s = time.time() - t0
    if args.train_only:
        return 0
    clips = scoring.synthmv_clips(args.test_manifest, args.clips)
    results: tp.Dict[str, tp.Any] = {}
    shared: tp.Dict[str, tp.Any] = {}
    for name in names:
        per_model = [score_model(jobs[(name, s)].model, clips, args, shared) for s in seeds]
        results[name] = per_model[0] if len(seeds) == 1 else aggregate.over_training_seeds(per_model)
        print(f"{name}: {results[name]}", file=sys.stderr)
    if "judge" not in shared:  # every model's scores came from the cache: the baselines still need the judge
        from vmas.hub import load_model

        judge(load_model(jobs[(names[-1], seeds[0])].model), shared)
    for row, scores in scoring.baselines(clips, *shared["judge"], shared["sr"], shared["seconds"], args.seed).items():
        # one shape for every row with several training seeds: {mean, std} (the baselines are deterministic)
        results[row] = scores if len(seeds) == 1 else {
            k: v if isinstance(v, str) else {"mean": float(v), "std": 0.0} for k, v in scores.items()}
    config = load_config(args.config, list(args.overrides))
    results["meta"] = aggregate.result_meta(
        "synthmv_benchmark", argv, {"codec": config.model.codec.pretrained}, clips=len(clips), steps=args.steps,
        seed=args.seed, training_seeds=seeds, sample_seeds=args.sample_seeds, beat_from_video=args.beat_from_video,
        spread=("std over training seeds of each model's mean over sampling seeds" if len(seeds) > 1
                else "std over sampling seeds of one trained model per variant"),
        cfg=config.generation.cfg if args.cfg is None else args.cfg, top_k=args.top_k,
        train_seconds=round(train_s, 1), total_seconds=round(time.time() - t0, 1), config=args.config,
        test_manifest=args.test_manifest, overrides=list(args.overrides))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    else:
        for name, r in results.items():
            print(name, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
