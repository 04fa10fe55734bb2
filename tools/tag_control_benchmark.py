"""Do tags control the music? (issue 11) Measured on held-out SynthMV videos with the SynthMV class classifier.

Conditions, all with the same seed and the model's video condition on:
  no_tags            video only                               -> accuracy w.r.t. the video's class
  tags_same          the video's own class tags (no tempo)    -> accuracy w.r.t. the video's class
  tags_other         tags of another class B                  -> fraction classified as B
  negative           negative tag = the video's instrument    -> fraction still classified as the video's class
  tempo_within_8pct  "N BPM" (N drawn inside the class's tempo range) -> fraction whose librosa tempo is within 8 %

    python tools/tag_control_benchmark.py --json [--model runs/synthmv/bench/full/model.pt]
"""
from __future__ import annotations

import argparse
import json
import sys
import typing as tp
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def class_tags(cls: int) -> tp.List[str]:
    """The tag words SynthMV attaches to a class, without the tempo."""
    from datasets.synthmv import CLASSES

    c = CLASSES[cls]
    tempo_word = {"slow": "slow tempo", "medium": "medium tempo", "fast": "fast tempo"}[c.tempo_family]
    return [c.instrument_tag, *c.moods, c.mode, tempo_word]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "runs" / "synthmv" / "bench" / "full" / "model.pt"))
    p.add_argument("--test-manifest", default=str(ROOT / "data" / "synthmv" / "test" / "vmas_manifest.jsonl"))
    p.add_argument("--clips", type=int, default=36)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--guide", default=None, choices=["all", "tags", "both"],
                   help="CFG branch when tags are given (see VMAS.generate); default: the model's generation.guide")
    p.add_argument("--tag-cfg", type=float, default=None,
                   help="guidance scale of the tags branch (default: the model's generation.tag_cfg; 0 = --cfg)")
    p.add_argument("--out", default=None, help="also write the JSON here (default: <run root>/tag_control_<guide>.json)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from synthmv_benchmark import generate, judge, load_clips

    from datasets.synthmv import CLASSES, estimate_tempo
    from vmas.hub import load_model

    pipe = load_model(args.model)
    if not pipe.config.model.tags.enabled:
        raise SystemExit(f"{args.model}: model has no tag branch")
    guide = args.guide or pipe.config.generation.guide
    tag_cfg = pipe.config.generation.tag_cfg if args.tag_cfg is None else args.tag_cfg
    clips = load_clips(Path(args.test_manifest), args.clips)
    sr = pipe.codec.sample_rate
    clf, _ = judge(pipe)
    rng = np.random.default_rng(args.seed)
    truth = np.array([c["class_id"] for c in clips])
    other = (truth + rng.integers(1, len(CLASSES), len(clips))) % len(CLASSES)  # a different class per clip
    tempos = [round(float(rng.uniform(*CLASSES[c].tempo_range))) for c in truth]

    def run(tags=None, negative=None):
        wavs = generate(pipe, clips, args.seed, args.cfg, args.top_k, tags=tags, negative=negative, guide=guide,
                        tag_cfg=tag_cfg)
        return wavs, clf.predict(wavs, sr)

    _, pred_none = run()
    _, pred_same = run(tags=[class_tags(c) for c in truth])
    _, pred_other = run(tags=[class_tags(b) for b in other])
    _, pred_neg = run(negative=[[CLASSES[c].instrument_tag] for c in truth])
    wav_tempo, _ = run(tags=[[f"{t} BPM"] for t in tempos])
    est = np.array([estimate_tempo(w, sr) for w in wav_tempo])
    within = np.abs(est - np.array(tempos)) <= 0.08 * np.array(tempos)
    result = {
        "no_tags": float(np.mean(pred_none == truth)),
        "tags_same": float(np.mean(pred_same == truth)),
        "tags_other": float(np.mean(pred_other == other)),
        "negative": float(np.mean(pred_neg == truth)),
        "tempo_within_8pct": float(np.mean(within)),
        "meta": {"clips": len(clips), "model": str(args.model), "seed": args.seed, "cfg": args.cfg,
                 "top_k": args.top_k, "guide": guide, "tag_cfg": tag_cfg or args.cfg,
                 "manifest": str(args.test_manifest), "requested_tempos": tempos, "estimated_tempos": [round(float(x), 1) for x in est]},
    }
    out = Path(args.out) if args.out else Path(args.model).parent.parent / f"tag_control_{guide}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
