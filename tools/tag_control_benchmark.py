"""Do tags control the music? (issue 11) Measured on held-out SynthMV videos with the SynthMV class classifier.

Conditions, all with the same sampling seeds (means over ``--sample-seeds``, default 3; a single seed moves class
accuracy by up to +-0.1 on 36 clips) and the model's video condition on:
  no_tags            video only                               -> accuracy w.r.t. the video's class
  tags_same          the video's own class tags (no tempo)    -> accuracy w.r.t. the video's class
  tags_other         tags of another class B                  -> fraction classified as B
  negative           negative tag = the video's instrument    -> fraction still classified as the video's class
  tempo_within_8pct  "N BPM" (N drawn inside the class's tempo range) -> fraction whose librosa tempo is within 8 %
  tempo_other_within_8pct   the same with N drawn in class B's range (a tempo the picture does not suggest)

    python tools/tag_control_benchmark.py --json [--model runs/synthmv/bench/full/model.pt]
"""
from __future__ import annotations

import argparse
import json
import sys
import typing as tp
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # default paths of the repo's data and runs


KEYS = ("no_tags", "tags_same", "tags_other", "negative", "tempo_within_8pct", "tempo_other_within_8pct")


def class_tags(cls: int) -> tp.List[str]:
    """The tag words SynthMV attaches to a class, without the tempo."""
    from vmas.synthmv import CLASSES

    c = CLASSES[cls]
    tempo_word = {"slow": "slow tempo", "medium": "medium tempo", "fast": "fast tempo"}[c.tempo_family]
    return [c.instrument_tag, *c.moods, c.mode, tempo_word]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "runs" / "synthmv" / "bench" / "full" / "model.pt"))
    p.add_argument("--test-manifest", default=str(ROOT / "data" / "synthmv" / "test" / "vmas_manifest.jsonl"))
    p.add_argument("--clips", type=int, default=36)
    p.add_argument("--seed", type=int, default=0, help="first sampling seed (also draws classes B and tempos)")
    p.add_argument("--sample-seeds", type=int, default=3,
                   help="sampling seeds per condition; the printed numbers are their means (spread in meta)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's generation.cfg)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--guide", default=None, choices=["all", "tags", "both"],
                   help="CFG branch when tags are given (see VMAS.generate); default: the model's generation.guide")
    p.add_argument("--tag-cfg", type=float, default=None,
                   help="guidance scale of the tags branch (default: the model's generation.tag_cfg; 0 = --cfg)")
    p.add_argument("--out", default=None, help="also write the JSON here (default: <run root>/tag_control_<guide>.json)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from vmas.evaluation import generate_windows
    from vmas.experiments.aggregate import result_meta
    from vmas.experiments.scoring import synthmv_clips, synthmv_judge
    from vmas.hub import load_model
    from vmas.synthmv import CLASSES, estimate_tempo

    pipe = load_model(args.model)
    if not pipe.config.model.tags.enabled:
        raise SystemExit(f"{args.model}: model has no tag branch")
    guide = args.guide or pipe.config.generation.guide
    tag_cfg = pipe.config.generation.tag_cfg if args.tag_cfg is None else args.tag_cfg
    cfg = pipe.spec.sampling.cfg if args.cfg is None else args.cfg
    clips = synthmv_clips(args.test_manifest, args.clips)
    sr = pipe.codec.sample_rate
    clf, _ = synthmv_judge(pipe)
    rng = np.random.default_rng(args.seed)
    truth = np.array([c["class_id"] for c in clips])
    other = (truth + rng.integers(1, len(CLASSES), len(clips))) % len(CLASSES)  # a different class per clip
    tempos = [round(float(rng.uniform(*CLASSES[c].tempo_range))) for c in truth]
    other_tempos = [round(float(rng.uniform(*CLASSES[b].tempo_range))) for b in other]

    def run(seed, tags=None, negative=None):
        wavs = generate_windows(pipe, clips, seed=seed, cfg_scale=cfg, top_k=args.top_k, tags=tags,
                                negative=negative, guide=guide, tag_cfg=tag_cfg)
        return wavs, clf.predict(wavs, sr)

    runs: tp.Dict[str, tp.List[float]] = {k: [] for k in KEYS}
    estimated = []
    for seed in range(args.seed, args.seed + args.sample_seeds):  # paired: every condition sees the same seeds
        _, pred_none = run(seed)
        _, pred_same = run(seed, tags=[class_tags(c) for c in truth])
        _, pred_other = run(seed, tags=[class_tags(b) for b in other])
        _, pred_neg = run(seed, negative=[[CLASSES[c].instrument_tag] for c in truth])
        wav_tempo, _ = run(seed, tags=[[f"{t} BPM"] for t in tempos])
        est = np.array([estimate_tempo(w, sr) for w in wav_tempo])
        wav_tempo, _ = run(seed, tags=[[f"{t} BPM"] for t in other_tempos])
        est_other = np.array([estimate_tempo(w, sr) for w in wav_tempo])
        estimated.append([round(float(x), 1) for x in est])
        for key, value in zip(KEYS, [pred_none == truth, pred_same == truth, pred_other == other, pred_neg == truth,
                                     np.abs(est - np.array(tempos)) <= 0.08 * np.array(tempos),
                                     np.abs(est_other - np.array(other_tempos)) <= 0.08 * np.array(other_tempos)]):
            runs[key].append(round(float(np.mean(value)), 4))
    result: tp.Dict[str, tp.Any] = {k: float(np.mean(v)) for k, v in runs.items()}
    result["meta"] = result_meta(
        "tag_control_benchmark", argv, clips=len(clips), model=str(args.model),
        seeds=list(range(args.seed, args.seed + args.sample_seeds)), runs=runs,
        std={k: round(float(np.std(v)), 4) for k, v in runs.items()}, cfg=cfg, top_k=args.top_k, guide=guide,
        tag_cfg=tag_cfg or cfg, manifest=str(args.test_manifest), requested_tempos=tempos,
        estimated_tempos=estimated)
    out = Path(args.out) if args.out else Path(args.model).parent.parent / f"tag_control_{guide}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
