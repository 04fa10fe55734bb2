"""Does the tag branch learn from music without video? (issue 25) Measured on SynthMV with classes held out.

(Over 150 lines because it declares its own data split, music-only shards, step budgets and a selection rule;
run folders, the training pool, score caches, spreads and meta are ``vmas.experiments``'.)

SynthMV's 6 classes are split: the ``--held-out`` classes (default 4 and 5) appear in training ONLY as music-only
clips (their audio and tags, no video: ``vmas.data.music_only.as_music_only`` rows -> shards without frames), the
others as paired clips, as today. Two models train with the same steps and seeds:

- ``with_unpaired``     paired shards + music-only shards mixed at ``data.unpaired_fraction`` (default: the held-out
                        share of the clips, 2/6)
- ``without_unpaired``  paired shards only (``data.unpaired_fraction=0``): the held-out classes are never heard

Each model then generates tags-only music (null video condition, ``generate_windows(video=False)``) for the held-out
SynthMV test videos' tags and the paired classes' tags, and video-only music for the paired classes' videos; the
codec-aware SynthMV classifier (``vmas.evaluation.synthmv_judge``) judges the class. Printed keys, each
``{mean, std}`` over the runs (sampling seeds x training seeds; the per-run values are in ``meta.runs``):

- ``unpaired_tags_class_acc``     with_unpaired, held-out classes, tags only
- ``paired_tags_class_acc``       with_unpaired, paired classes, tags only
- ``without_unpaired_class_acc``  without_unpaired, held-out classes, tags only (the baseline)
- ``paired``                      both models on the paired classes (tags only, and video only): what mixing in
                                  music-only clips costs the paired classes

Options are chosen on a selection set before the test set is scored: ``--split selection`` scores SynthMV videos
drawn with another generator seed than the test videos, and comma lists in ``--steps`` / ``--fraction`` train and
score a grid (``--budget paired``: with_unpaired gets the extra steps its music-only clips take, so both variants
see the same paired clips), printed as ``grid`` (one entry per setting, the keys above) and ``chosen`` (the rule is in
:func:`choose` and in ``meta.selection_rule``). The chosen setting is then scored once on ``--split test``.

Everything is made here and cached (a fresh clone needs only the package): SynthMV videos
(``<data>/train|selection|test``), the codec of the shipped demo model (``vmas/assets/vmas-synthmv-demo.pt``, so no
codec training), paired and music-only shards, the trained runs (``<out>/steps<S>/without_unpaired/seed<N>`` and
``<out>/steps<S>/with_unpaired_f<F>[_paired]/seed<N>``, each finished when its ``model.pt`` exists; an interrupted run resumes
from its checkpoint) and each model's scores per split (``scores_<key>.json``).

    python tools/unpaired_benchmark.py --json --split selection --steps 300 --fraction 0.15,0.25,auto \
        --budget steps,paired --train-seeds 0,1          # docs/results/unpaired_selection.json
    python tools/unpaired_benchmark.py --json --steps 300 --fraction auto --budget paired --train-seeds 0,1,2
                                                          # the chosen setting on the test set: docs/results/unpaired.json
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
import typing as tp
from pathlib import Path

import numpy as np
import torch

from vmas.experiments import aggregate, runs, scoring

ROOT = Path(__file__).resolve().parent.parent  # default paths of the repo's configs, data and runs

VARIANTS = ("with_unpaired", "without_unpaired")
SPLIT_SEEDS = {"test": 1, "selection": 2}  # SynthMV generator seed of each scoring split


def make_data(args) -> tp.Dict[str, tp.Any]:
    """SynthMV train/test videos, the demo codec, paired + music-only shards (each step skipped when done)."""
    from vmas.builders import build_codec
    from vmas.config import load_config
    from vmas.data import shards
    from vmas.data.music_only import as_music_only
    from vmas.models.codec import save_codec
    from vmas.solvers.export import init_codec
    from vmas.synthmv import generate_dataset

    data = Path(args.data)
    # seeds 0/1/2: training, test and selection videos are disjoint draws of the same generator
    for split, num, seed, window in (("train", args.train_videos, 0, 5.0), (args.split, args.test_videos,
                                                                            SPLIT_SEEDS[args.split], None)):
        if not (data / split / "vmas_manifest.jsonl").exists():
            print(f"SynthMV {split}: {num} videos", file=sys.stderr)
            generate_dataset(data / split, num, seed=seed, split=split, window=window, workers=1)
    codec_path = data / "codec.pt"
    cfg = load_config(args.config, [f"model.codec.pretrained={codec_path}"])
    if not codec_path.exists():  # the codec stored in the demo export, as a fine-tune of it would take it
        codec_path.parent.mkdir(parents=True, exist_ok=True)
        init = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=args.codec_from))
        save_codec(init_codec(init), codec_path, source=args.codec_from)
    held = set(args.held_out)
    rows = shards.read_curation_manifest(data / "train" / "vmas_manifest.jsonl")
    paired = [r for r in rows if r["class_id"] not in held]
    music = [as_music_only(r) for r in rows if r["class_id"] in held]
    enc, align = shards.default_factories(cfg.data, cfg.loss, functools.partial(build_codec, cfg.model.codec))
    out = {}
    for name, part in (("paired", paired), ("music", music)):
        summary = shards.write_shards(part, data / "shards" / name, cfg.data, enc, align, splits=["train"],
                                      workers=args.preprocess_workers)
        out[name] = {"clips": summary["clips"], "rejected": summary["rejected"]}
        print(f"{name} shards: {summary}", file=sys.stderr)
    return {"codec": str(codec_path), "paired": str(data / "shards" / "paired" / "train-*.tar"),
            "music": str(data / "shards" / "music" / "train-*.tar"), "counts": out,
            "fraction": len(music) / max(1, len(rows))}


def run_dir(out_root: Path, name: str, seed: int, steps: int, fraction: float, budget: str = "steps") -> Path:
    """``<out>/steps<S>/without_unpaired/seed<N>`` (shared by every fraction) or
    ``<out>/steps<S>/with_unpaired_f<F>[_paired]/seed<N>`` (``_paired``: the ``--budget paired`` runs)."""
    variant = name if name == "without_unpaired" else f"{name}_f{fraction:g}" + ("_paired" if budget == "paired" else "")
    return runs.run_dir(out_root, variant, seed, steps)


def run_steps(name: str, steps: int, fraction: float, budget: str) -> int:
    """Optimiser steps of a run: ``steps``, or with ``budget="paired"`` enough for with_unpaired to see as many
    paired clips as without_unpaired (``steps / (1 - fraction)``: the music-only clips come on top, as added data)."""
    return round(steps / (1.0 - fraction)) if name == "with_unpaired" and budget == "paired" else steps


def train_job(args, data, name: str, seed: int, steps: int, fraction: float, budget: str) -> runs.TrainJob:
    extra = ([f"data.unpaired_shards={data['music']}", f"data.unpaired_fraction={fraction}"]
             if name == "with_unpaired" else ["data.unpaired_fraction=0"])
    return runs.TrainJob(run_dir(Path(args.out), name, seed, steps, fraction, budget), args.config, (
        f"train.seed={seed}", f"model.codec.pretrained={data['codec']}", f"data.train_shards={data['paired']}",
        "data.val_shards=''", "train.eval_every=0", f"optim.max_steps={run_steps(name, steps, fraction, budget)}",
        "train.save_every=100", *args.overrides, *extra))


def score_model(path: Path, clips: tp.Sequence[dict], args, shared: dict) -> tp.Dict[str, tp.List[float]]:
    """Per sampling seed: class accuracy of tags-only music for the held-out / paired test clips and of video-only
    music for the paired ones. Cached beside the model, keyed by the model's bytes, the clips and the settings."""
    from vmas.evaluation import generate_windows
    from vmas.hub import load_model

    def compute() -> tp.Dict[str, tp.List[float]]:
        pipe = load_model(path)
        if "judge" not in shared:  # every model shares the codec
            shared["judge"] = scoring.synthmv_judge(pipe)[0]
        clf, sr = shared["judge"], pipe.codec.sample_rate
        gen = dict(cfg_scale=pipe.spec.sampling.cfg if args.cfg is None else args.cfg, top_k=args.top_k)
        truth = np.array([c["class_id"] for c in clips])
        out = np.isin(truth, args.held_out)
        res: tp.Dict[str, tp.List[float]] = {"held_out_tags": [], "paired_tags": [], "paired_video": []}
        for seed in range(args.seed, args.seed + args.sample_seeds):
            pred = clf.predict(generate_windows(pipe, clips, seed=seed, tags=[c["tags"] for c in clips],
                                                video=False, **gen), sr)
            res["held_out_tags"].append(round(float(np.mean(pred[out] == truth[out])), 4))
            res["paired_tags"].append(round(float(np.mean(pred[~out] == truth[~out])), 4))
            pred_v = clf.predict(generate_windows(pipe, [c for c, o in zip(clips, out) if not o], seed=seed, **gen),
                                 sr)
            res["paired_video"].append(round(float(np.mean(pred_v == truth[~out])), 4))
        return res

    key = {"clips": [c["id"] for c in clips], "split": args.split, "held": sorted(args.held_out), "seed": args.seed,
           "sample_seeds": args.sample_seeds, "cfg": args.cfg, "top_k": args.top_k}
    return runs.cached_scores(path, key, compute)


def measure(paths, clips, args, shared, seeds, steps: int, fraction: float, budget: str) -> tp.Dict[str, tp.Any]:
    """The printed keys of one (steps, fraction, budget) setting, pooled over training and sampling seeds."""
    scores = {(n, s): score_model(paths[(n, s, steps, fraction, budget)], clips, args, shared)
              for n in VARIANTS for s in seeds}

    def pooled(name: str, metric: str) -> tp.Dict[str, float]:
        return aggregate.spread([v for s in seeds for v in scores[(name, s)][metric]])

    return {"steps": steps, "fraction": fraction, "budget": budget,
            "with_unpaired_steps": run_steps("with_unpaired", steps, fraction, budget),
            "unpaired_tags_class_acc": pooled("with_unpaired", "held_out_tags"),
            "paired_tags_class_acc": pooled("with_unpaired", "paired_tags"),
            "without_unpaired_class_acc": pooled("without_unpaired", "held_out_tags"),
            "paired": {n: {"tags_class_acc": pooled(n, "paired_tags"), "video_class_acc": pooled(n, "paired_video")}
                       for n in VARIANTS},
            "runs": {f"{n}/seed{s}": scores[(n, s)] for n in VARIANTS for s in seeds}}


def choose(tried: tp.Mapping[int, tp.Mapping[str, tp.Any]]) -> int:
    """Settings whose paired results (tags-only and video-only class accuracy of with_unpaired) are each no lower
    than without_unpaired's mean minus its std at the same steps qualify; among them the largest gain
    unpaired_tags_class_acc - without_unpaired_class_acc wins (ties: fewer with_unpaired steps). When none
    qualifies, the smallest paired shortfall wins."""
    ok = [i for i, r in tried.items() if shortfall(r) == 0.0]
    if ok:
        return max(ok, key=lambda i: (gain(tried[i]), -tried[i]["with_unpaired_steps"]))
    return min(tried, key=lambda i: (shortfall(tried[i]), -gain(tried[i])))


def shortfall(r) -> float:
    w, wo = r["paired"]["with_unpaired"], r["paired"]["without_unpaired"]
    return sum(max(0.0, wo[k]["mean"] - wo[k]["std"] - w[k]["mean"]) for k in ("tags_class_acc", "video_class_acc"))


def gain(r) -> float:
    return r["unpaired_tags_class_acc"]["mean"] - r["without_unpaired_class_acc"]["mean"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "synthmv_tiny.yaml"))
    p.add_argument("--data", default=str(ROOT / "data" / "unpaired"), help="SynthMV videos, codec and shards")
    p.add_argument("--out", default=str(ROOT / "runs" / "unpaired"), help="trained runs and results.json")
    p.add_argument("--codec-from", default=str(ROOT / "vmas" / "assets" / "vmas-synthmv-demo.pt"),
                   help="inference export whose codec tokenizes the music (SynthMV's)")
    p.add_argument("--held-out", default="4,5", help="classes seen in training only as music-only clips")
    p.add_argument("--train-videos", type=int, default=480, help="SynthMV training videos (2 windows of 5 s each)")
    p.add_argument("--test-videos", type=int, default=36, help="held-out SynthMV scoring videos (6 per class)")
    p.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="test",
                   help="score on the test videos or on the selection videos (choose --steps/--fraction there first)")
    p.add_argument("--steps", default="600", help="optimiser steps per run (same for both variants); a comma list "
                   "makes a grid (with --fraction), printed as 'grid' + the 'chosen' setting (run it on --split selection)")
    p.add_argument("--budget", default="steps",
                   help="steps, paired, or a comma list of both. steps: both variants train --steps optimiser steps "
                   "(the paired clips share them with the music-only ones); paired: with_unpaired trains "
                   "steps / (1 - fraction), so it sees as many paired clips as without_unpaired and the music-only "
                   "clips are added data")
    p.add_argument("--fraction", default="auto", help="data.unpaired_fraction of with_unpaired, or a comma list "
                   "(auto: the held-out classes' share of the clips)")
    p.add_argument("--train-seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--sample-seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="first sampling seed")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's generation.cfg)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    p.add_argument("--preprocess-workers", type=int, default=0, help="shard-writing processes (0 = this process)")
    p.add_argument("--train-only", action="store_true", help="make the data and train the missing runs, then stop")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = p.parse_args(argv)
    args.held_out = [int(x) for x in args.held_out.split(",") if x != ""]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    t0 = time.time()
    data = make_data(args)
    seeds = [int(x) for x in args.train_seeds.split(",") if x != ""]
    grid = [(int(st), float(fr) if fr != "auto" else round(data["fraction"], 4), bu)
            for bu in args.budget.split(",") for st in args.steps.split(",") for fr in args.fraction.split(",")]
    jobs = {(n, s, *g): train_job(args, data, n, s, *g) for g in grid for s in seeds for n in VARIANTS}
    runs.train_pool(jobs.values(), args.jobs)
    train_s = time.time() - t0
    if args.train_only:
        return 0
    clips = scoring.synthmv_clips(Path(args.data) / args.split / "vmas_manifest.jsonl", args.test_videos, 16)
    shared: tp.Dict[str, tp.Any] = {}
    paths = {k: j.model for k, j in jobs.items()}
    results = [measure(paths, clips, args, shared, seeds, *g) for g in grid]
    result = results[0] if len(grid) == 1 else {"grid": results,
                                                "chosen": chosen(results, aggregate.choose(dict(enumerate(results)),
                                                                                           choose))}
    from vmas.config import load_config

    cfg = load_config(args.config).generation.cfg if args.cfg is None else args.cfg
    result["meta"] = aggregate.result_meta(
        "unpaired_benchmark", argv, {"codec": data["codec"]}, held_out_classes=args.held_out, split=args.split,
        test_clips=len(clips), held_out_test_clips=sum(c["class_id"] in args.held_out for c in clips),
        training_seeds=seeds, sampling_seeds=list(range(args.seed, args.seed + args.sample_seeds)),
        spread="mean and population std over all (training seed, sampling seed) runs",
        default_fraction=round(data["fraction"], 4), train_clips=data["counts"], cfg=cfg, top_k=args.top_k,
        config=args.config, codec_from=args.codec_from, overrides=list(args.overrides),
        train_seconds=round(train_s, 1), total_seconds=round(time.time() - t0, 1))
    if len(grid) == 1:
        result["meta"].update(steps=grid[0][0], unpaired_fraction=grid[0][1], budget=grid[0][2],
                              runs=results[0].pop("runs"))
    else:
        result["meta"]["selection_rule"] = aggregate.rule_text(choose)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"results_{args.split}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


def chosen(results: tp.Sequence[tp.Mapping[str, tp.Any]], i: int) -> tp.Dict[str, tp.Any]:
    """The ``chosen`` entry of a grid: setting ``i``, whether any setting qualified, its gain and shortfall."""
    best = results[i]
    return {"steps": best["steps"], "fraction": best["fraction"], "budget": best["budget"],
            "qualified": any(shortfall(r) == 0.0 for r in results), "gain": round(gain(best), 4),
            "paired_shortfall": round(shortfall(best), 4)}


if __name__ == "__main__":
    sys.exit(main())
