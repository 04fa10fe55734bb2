"""The paper's ablation in miniature, on SynthMV where the truth is known (issues 10, 17).

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
import shutil
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import numpy as np
import torch

from vmas.evaluation import generate_windows as generate
from vmas.evaluation import load_synthmv_clips as load_clips
from vmas.evaluation import synthmv_judge
from vmas.experiments.provenance import provenance
from vmas.metrics.synthmv import mean_std, score

ROOT = Path(__file__).resolve().parent.parent  # default paths of the repo's configs, data and runs

VARIANTS: tp.Dict[str, tp.List[str]] = {
    "ar_only": ["loss.contrastive_weight=0.0", "loss.beat_lambda=1.0"],
    "contrastive": ["loss.beat_lambda=1.0"],
    "full": [],
    "beat_only": ["loss.contrastive_weight=0.0"],
}


def run_dir(out_root: Path, name: str, seed: int) -> Path:
    return out_root / name / f"seed{seed}"


def train_variants(config: str, out_root: Path, steps: int, runs: tp.Sequence[tp.Tuple[str, int]], retrain: bool,
                   extra: tp.Sequence[str], jobs: int = 3) -> tp.Dict[tp.Tuple[str, int], Path]:
    """Train the missing (variant, training seed) runs, at most ``jobs`` at once (one thread each); returns
    {(name, seed): model.pt}.

    A run is finished when its ``model.pt`` exists (written at the end of training); an unfinished run with a
    checkpoint resumes from it, so killing the benchmark loses at most ``train.save_every`` steps of each run.
    """
    from vmas.solvers.checkpoint import latest_checkpoint

    paths = {(name, seed): run_dir(out_root, name, seed) / "model.pt" for name, seed in runs}
    todo = []
    for (name, seed), path in paths.items():
        out = path.parent
        if retrain and out.exists():
            shutil.rmtree(out)
        if not path.exists():
            todo.append((name, seed))
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    running: tp.Dict[tp.Tuple[str, int], tp.Tuple[subprocess.Popen, tp.Any]] = {}
    while todo or running:
        while todo and len(running) < max(1, jobs):
            name, seed = todo.pop(0)
            if paths[(name, seed)].exists():  # finished meanwhile (e.g. by a second benchmark on the same root)
                continue
            out = run_dir(out_root, name, seed)
            cmd = [sys.executable, str(ROOT / "tools" / "train.py"), config, f"train.out_dir={out}",
                   f"optim.max_steps={steps}", f"train.seed={seed}", *VARIANTS[name], *extra]
            if latest_checkpoint(out / "checkpoints") is not None:
                cmd.append("--resume")
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / "train.log", "a")
            print(f"training {name} seed {seed}: {' '.join(cmd[2:])}", file=sys.stderr)
            running[(name, seed)] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT),
                                     log)
        time.sleep(2)
        for key, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[key]
            if proc.returncode != 0 or not paths[key].exists():
                for other, _ in running.values():
                    other.terminate()
                raise SystemExit(f"training {key[0]} seed {key[1]} failed: see "
                                 f"{run_dir(out_root, *key) / 'train.log'}")
    return paths


def oracle_onsets(clips: tp.Sequence[dict], seconds: float, sr: int, frame_rate: int) -> torch.Tensor:
    """[N, frames] float: each clip's own music onsets on the code grid, detected exactly as training detects them
    (``vmas.alignment.music_beats``); what a model with ``model.lm.onset_oracle`` is given (a diagnostic)."""
    from vmas.alignment import music_beats
    from vmas.data import media

    n = round(seconds * frame_rate)
    return torch.stack([music_beats(media.read_audio(c["video"], sr=sr, duration=seconds), sr, frame_rate, n).float()
                        for c in clips])


def over_training_seeds(models: tp.Sequence[tp.Dict[str, tp.Any]]) -> tp.Dict[str, tp.Any]:
    """Per-model results (each metric a number or ``{mean, std}`` over sampling seeds) -> each metric
    ``{mean, std, runs, sampling_std}``: mean and population std over the models (training seeds) of their
    per-model means; ``sampling_std`` the mean over models of their sampling-seed std. Strings (notes) are kept."""
    out: tp.Dict[str, tp.Any] = {}
    for k, v0 in models[0].items():
        if isinstance(v0, str):
            out[k] = v0
            continue
        means = [float(m[k]["mean"]) if isinstance(m[k], dict) else float(m[k]) for m in models]
        samp = [float(m[k]["std"]) if isinstance(m[k], dict) else 0.0 for m in models]
        out[k] = {"mean": float(np.mean(means)), "std": float(np.std(means)), "runs": [round(x, 4) for x in means],
                  "sampling_std": float(np.mean(samp))}
    return out


def judge(pipe):
    """The SynthMV class classifier for ``pipe``'s music and the codec round trip (``vmas.evaluation.synthmv_judge``)."""
    from vmas.synthmv import SynthMVClassifier

    return synthmv_judge(pipe, SynthMVClassifier)


def retrieval_r1(pipe, clips: tp.Sequence[dict]) -> tp.Tuple[float, float, str]:
    """(R@1 with the training-time music feature, R@1 with one-hot real codes, note); see
    ``model_retrieval_embeddings(music_from=...)``. The first is the reported number (decided before measuring)."""
    from vmas.losses import ContrastiveLoss
    from vmas.metrics.retrieval import model_retrieval_embeddings, recall_at_k

    note = "trained contrastive heads; music side = null-condition LM predictions of the real codes"
    if pipe.model.contrastive is None:  # ar_only: no heads were trained; fresh heads = what the model alone offers
        torch.manual_seed(0)
        c = pipe.config
        pipe.model.contrastive = ContrastiveLoss(pipe.model.encoder.out_dim, pipe.codec.codebooks().shape[-1],
                                                 c.loss.contrastive_dim, c.loss.contrastive_temperature).eval()
        note = "no contrastive heads (ar_only): freshly initialised heads, expect chance"
    r1 = {}
    for source in ("logits", "codes"):
        v, m, _ = model_retrieval_embeddings(pipe, clips, music_from=source)
        r1[source] = recall_at_k(v, m, ks=(1,))["R@1"]
    return r1["logits"], r1["codes"], note


def score_model(path: Path, clips: tp.Sequence[dict], args, classifier_cache: dict) -> tp.Dict[str, tp.Any]:
    """Generate and score one trained model (cached in ``<run>/scores_<key>.json``; reused unless ``--rescore``)."""
    import hashlib

    from vmas.hub import load_model

    key = json.dumps({"clips": [c["id"] for c in clips], "videos": [c["video"] for c in clips], "seed": args.seed,
                      "sample_seeds": args.sample_seeds, "cfg": args.cfg, "top_k": args.top_k,
                      "beat_from_video": args.beat_from_video,
                      "model_sha1": hashlib.sha1(path.read_bytes()).hexdigest()}, sort_keys=True)
    cache = path.parent / f"scores_{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    if cache.exists() and not args.rescore:  # the key holds the model's bytes: a retrained model is rescored
        return json.loads(cache.read_text())
    pipe = load_model(path)
    if "judge" not in classifier_cache:  # every model shares the codec of the config
        classifier_cache["judge"] = judge(pipe)
        classifier_cache["sr"] = pipe.codec.sample_rate
        classifier_cache["seconds"] = pipe.config.data.clip_seconds
    classifier, _ = classifier_cache["judge"]
    sr = pipe.codec.sample_rate
    onsets = None
    if pipe.config.model.lm.onset_oracle:
        onsets = oracle_onsets(clips, pipe.config.data.clip_seconds, sr, pipe.codec.frame_rate)
    runs = [score(generate(pipe, clips, args.seed + k, args.cfg, args.top_k, beat_from_video=args.beat_from_video,
                           onsets=onsets), sr, clips, classifier)
            for k in range(args.sample_seeds)]
    result = mean_std(runs)
    r1, r1_codes, note = retrieval_r1(pipe, clips)
    result.update({"r_at_1": r1, "r_at_1_onehot_codes": r1_codes, "r_at_1_note": note})
    cache.write_text(json.dumps(result, indent=1))
    return result




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
    p.add_argument("--cfg", type=float, default=3.0)
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

    out_root = Path(args.out)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    seeds = [int(x) for x in args.train_seeds.split(",") if x != ""]
    t0 = time.time()
    if args.no_train:
        missing = [str(run_dir(out_root, n, s)) for n in names for s in seeds
                   if not (run_dir(out_root, n, s) / "model.pt").exists()]
        if missing:
            raise SystemExit(f"--no-train: no model.pt in {', '.join(missing)}; train them first")
    paths = train_variants(args.config, out_root, args.steps, [(n, s) for n in names for s in seeds], args.retrain,
                           args.overrides, args.jobs)
    train_s = time.time() - t0
    if args.train_only:
        return 0
    clips = load_clips(Path(args.test_manifest), args.clips)
    results: tp.Dict[str, tp.Any] = {}
    shared: tp.Dict[str, tp.Any] = {}
    for name in names:
        per_model = [score_model(paths[(name, s)], clips, args, shared) for s in seeds]
        results[name] = per_model[0] if len(seeds) == 1 else over_training_seeds(per_model)
        print(f"{name}: {results[name]}", file=sys.stderr)
    if "judge" not in shared:  # every model's scores came from the cache: the baselines still need the judge
        from vmas.hub import load_model

        pipe = load_model(paths[(names[-1], seeds[0])])
        shared.update(judge=judge(pipe), sr=pipe.codec.sample_rate, seconds=pipe.config.data.clip_seconds)
    classifier, roundtrip = shared["judge"]

    # random baseline: each clip gets the real music of another held-out clip (a derangement)
    from vmas.data import media

    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(clips))
    while len(clips) > 1 and np.any(perm == np.arange(len(clips))):
        perm = rng.permutation(len(clips))
    sr, seconds = shared["sr"], shared["seconds"]
    real = [media.read_audio(c["video"], sr=sr, duration=seconds).numpy() for c in clips]
    results["random"] = score([real[j] for j in perm], sr, clips, classifier)
    results["random"]["r_at_1"] = 1.0 / len(clips)
    results["random"]["r_at_1_note"] = "chance (1/N)"
    # ceiling: the clip's own music through the codec (what a perfect LM could produce)
    results["codec_ceiling"] = score([roundtrip(w) for w in real], sr, clips, classifier)
    if len(seeds) > 1:  # one shape for every row: {mean, std} (the baselines are deterministic: std 0)
        for row in ("random", "codec_ceiling"):
            results[row] = {k: v if isinstance(v, str) else {"mean": float(v), "std": 0.0}
                            for k, v in results[row].items()}
    results["meta"] = {"clips": len(clips), "steps": args.steps, "seed": args.seed, "training_seeds": seeds,
                       "sample_seeds": args.sample_seeds, "beat_from_video": args.beat_from_video,
                       "spread": ("std over training seeds of each model's mean over sampling seeds" if len(seeds) > 1
                                  else "std over sampling seeds of one trained model per variant"),
                       "cfg": args.cfg, "top_k": args.top_k, "train_seconds": round(train_s, 1),
                       "total_seconds": round(time.time() - t0, 1), "config": args.config,
                       "test_manifest": args.test_manifest, "overrides": list(args.overrides),
                       "command": "python tools/synthmv_benchmark.py " + " ".join(argv if argv is not None
                                                                                  else sys.argv[1:])}
    from vmas.config import load_config

    codec = load_config(args.config, list(args.overrides)).model.codec.pretrained
    results["meta"].update(provenance({"codec": codec}))
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    else:
        for name, r in results.items():
            print(name, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
