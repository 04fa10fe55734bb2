"""Real-music testbed benchmark (issue 32): the codec's reconstruction, then motion-conditioned LMs, on held-out
tracks of RealMusic-MV (``datasets/realmusic_mv.py``; data, codec and shards: ``make realmusic-data``).

(Over 150 lines for its two subcommands' flags; the scores are ``vmas.experiments.realmusic_scores``', runs and
spreads ``vmas.experiments``'.)

    python tools/realmusic_benchmark.py codec --json > docs/results/realmusic_codec.json
    python tools/realmusic_benchmark.py lm --train-seeds 0,1,2 --steps 800 --json > docs/results/realmusic.json
    python tools/realmusic_benchmark.py lm --train-only --train-seeds 0,1,2      # train the missing runs, stop

``codec``: every held-out test clip (10 s) through the codec and through plain baselines of the same bit rate
(``n_q * log2(card) * frame_rate`` bit/s): mu-law PCM at a low sample rate, and a quantised mel spectrogram inverted
with Griffin-Lim. Scores: log-mel L1 distance (the codec trainer's), SI-SDR (dB), onset F1 against the clip's
labelled onsets (+-50 ms) and FAD of the reconstructions against the originals with the weight-free mel-statistics
backbone (``vmas.metrics.embeddings.MelStatsEmbedder``: NOT comparable with VGGish FAD; flagged in the result).

``lm``: trains (or reuses: a run with ``model.pt`` is finished, ``vmas.experiments.runs``) one run per training
seed of ``configs/realmusic.yaml`` (motion condition), generates each test clip's first window from the picture
alone (no tags) and scores it (cached beside each model):

- ``onset_f1``: the generated music's onsets vs every onset detected in the clip's real music (+-50 ms);
- ``mv_align``: MV-Align (Farneback, AV-Align IoU) of generated music and the clip's picture;
- ``class_acc``: a kNN soundtrack classifier trained on real training-track audio (and its codec round trips, so
  codec artefacts alone do not change the class) vs the picture's soundtrack;
- ``fad_same_class`` / ``fad_other_class``: per class, mel-statistics FAD of the generated music of that class's
  clips against held-out real music (the selection split's tracks) of the same class / of the other classes,
  averaged over classes (weight-free backbone: a relative number only).

Rows: ``model`` ({mean, std} over training seeds), ``mismatched`` (each clip gets the real music of another test
clip of a different class), ``codec_ceiling`` (the clip's own music through the codec).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing as tp
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "realmusic"


def lm_main(args) -> tp.Dict[str, tp.Any]:
    from vmas.config import load_config
    from vmas.evaluation import generate_windows
    from vmas.experiments import aggregate
    from vmas.experiments.provenance import codec_record
    from vmas.experiments.realmusic_scores import (
        FAD_NOTE,
        SR,
        SoundtrackJudge,
        clip_audio,
        mismatch,
        realmusic_clips,
        score_set,
    )
    from vmas.experiments.runs import TrainJob, cached_scores, key_digest, run_dir, train_pool
    from vmas.experiments.scoring import codec_roundtrip
    from vmas.hub import load_model
    from vmas.models.codec import load_codec

    seeds = [int(x) for x in args.train_seeds.split(",") if x != ""]
    jobs = {s: TrainJob(run_dir(args.out, args.variant, s), args.config,
                        (f"optim.max_steps={args.steps}", f"train.seed={s}", *args.overrides)) for s in seeds}
    if not args.no_train and not args.baselines_only:
        train_pool(jobs.values(), args.jobs, poll_s=5.0)
    if args.train_only:
        return {}
    config = load_config(args.config, list(args.overrides))
    seconds = config.data.clip_seconds
    clips = realmusic_clips(args.test, args.clips)
    codec = load_codec(ROOT / config.model.codec.pretrained).eval()
    roundtrip = codec_roundtrip(codec)
    train: tp.List[dict] = []
    for c in realmusic_clips(args.train):  # the first --judge-clips of each class
        if sum(d["class_id"] == c["class_id"] for d in train) < args.judge_clips:
            train.append(c)
    judge = SoundtrackJudge.build(train, roundtrip, seconds,
                                  Path(args.out) / f"judge_{int(seconds * 1000)}ms_{args.judge_clips}.npz")
    refs: tp.Dict[int, tp.List[np.ndarray]] = {}
    for c in realmusic_clips(args.reference):
        refs.setdefault(c["class_id"], []).append(clip_audio(c))
    real = [clip_audio(c, seconds) for c in clips]
    judge_real = float(np.mean(judge.predict(real, SR) == np.array([c["class_id"] for c in clips])))

    def model_scores(seed: int) -> tp.Dict[str, tp.Any]:
        path = jobs[seed].model

        def compute() -> tp.Dict[str, tp.Any]:
            pipe = load_model(path)
            runs = [score_set(generate_windows(pipe, clips, seed=args.seed + k, cfg_scale=args.cfg, top_k=args.top_k),
                              clips, judge, refs, seconds) for k in range(args.sample_seeds)]
            return aggregate.over_sampling_seeds(runs)

        key = {"clips": [c["id"] for c in clips], "seed": args.seed, "sample_seeds": args.sample_seeds,
               "cfg": args.cfg, "top_k": args.top_k, "reference": str(args.reference), "metric": "realmusic-v1"}
        return cached_scores(path, key, compute, args.rescore)

    def baselines() -> tp.Dict[str, tp.Any]:
        """``mismatched`` and ``codec_ceiling`` rows, cached in ``--out`` (they need no trained model)."""
        key = {"clips": [c["id"] for c in clips], "seed": args.seed, "reference": str(args.reference),
               "codec": codec_record(ROOT / config.model.codec.pretrained)["weights_sha256"],
               "judge": args.judge_clips, "metric": "realmusic-v1"}
        cache = Path(args.out) / f"baselines_{key_digest(key)}.json"
        if cache.exists() and not args.rescore:
            return json.loads(cache.read_text())
        perm = mismatch(clips, args.seed)
        rows = {"mismatched": score_set([real[j] for j in perm], clips, judge, refs, seconds),
                "codec_ceiling": score_set([roundtrip(w) for w in real], clips, judge, refs, seconds)}
        cache.write_text(json.dumps(rows, indent=1))
        return rows

    if args.baselines_only:
        return dict(baselines(), judge_acc_on_real_test=judge_real)
    per_model = [model_scores(s) for s in seeds]
    results: tp.Dict[str, tp.Any] = {
        "model": per_model[0] if len(seeds) == 1 else aggregate.over_training_seeds(per_model)}
    results.update(baselines())
    results["meta"] = aggregate.result_meta(
        "realmusic_benchmark", args.argv, {"codec": ROOT / config.model.codec.pretrained},
        training_seeds=seeds, steps=args.steps, config=args.config, overrides=list(args.overrides),
        test=str(args.test), clips=len(clips), window_seconds=seconds, sample_seeds=args.sample_seeds,
        cfg=args.cfg, top_k=args.top_k, judge_acc_on_real_test=judge_real, fad_reference=str(args.reference),
        fad_note=FAD_NOTE, mismatched="each clip gets the real music of a test clip of another class",
        spread="std over training seeds of each model's mean over sampling seeds")
    return results


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("codec", help="reconstruction on held-out tracks vs plain baselines of the same bit rate")
    c.add_argument("--codec", default=str(ROOT / "runs" / "realmusic" / "codec.pt"))
    c.add_argument("--test", default=str(DATA / "test"), help="RealMusic-MV folder of held-out clips")
    c.add_argument("--clips", type=int, default=0, help="first N clips (0 = all)")
    c.add_argument("--json", action="store_true")
    m = sub.add_parser("lm", help="train (or reuse) motion-conditioned LMs over training seeds and score them")
    m.add_argument("--config", default="configs/realmusic.yaml")
    m.add_argument("--variant", default="motion", help="run folder name under --out")
    m.add_argument("--out", default=str(ROOT / "runs" / "realmusic" / "lm"))
    m.add_argument("--train", default=str(DATA / "train"), help="clips the soundtrack judge is trained on")
    m.add_argument("--test", default=str(DATA / "test"))
    m.add_argument("--reference", default=str(DATA / "select"), help="held-out real music for the FAD columns")
    m.add_argument("--clips", type=int, default=0)
    m.add_argument("--steps", type=int, default=800)
    m.add_argument("--train-seeds", default="0,1,2")
    m.add_argument("--jobs", type=int, default=3, help="training processes at once (one thread each)")
    m.add_argument("--seed", type=int, default=0, help="first sampling seed (and the mismatch permutation)")
    m.add_argument("--sample-seeds", type=int, default=1)
    m.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's generation.cfg)")
    m.add_argument("--top-k", type=int, default=None)
    m.add_argument("--rescore", action="store_true")
    m.add_argument("--judge-clips", type=int, default=40, help="training clips per class the judge learns from")
    m.add_argument("--baselines-only", action="store_true",
                   help="score (and cache) the mismatched and codec-ceiling rows only; no model needed")
    m.add_argument("--train-only", action="store_true")
    m.add_argument("--no-train", action="store_true", help="score finished runs only")
    m.add_argument("--json", action="store_true")
    m.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    if args.cmd == "codec":
        from vmas.experiments.realmusic_scores import codec_report, realmusic_clips

        result = codec_report(Path(args.codec), realmusic_clips(args.test, args.clips), Path(args.codec).parent)
        from vmas.experiments.aggregate import result_meta

        result["meta"] = result_meta("realmusic_benchmark", args.argv, {"codec": args.codec}, test=args.test,
                                     clips=len(realmusic_clips(args.test, args.clips)), seconds_per_clip=10.0)
    else:
        result = lm_main(args)
        if args.train_only:
            return 0
    text = json.dumps(result, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
