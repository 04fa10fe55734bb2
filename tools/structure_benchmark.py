"""Does the music follow the picture's structure? Scene cuts and hit points on multi-scene SynthMV (issue 22).

(Over 150 lines for its docstring and its methods x baselines table; the scores are
``vmas.experiments.scene_scores``, selection, spreads and meta ``vmas.experiments.aggregate``.)

Makes its own held-out videos (``vmas.synthmv.generate_dataset(scenes=N)``: the scene class, hence instrument, key
and tempo, changes at each cut; the labels give the cut times and each segment's class), generates music for them
with the shipped model through ``vmas.generate.generate_for_video`` (what ``vmas generate`` runs) and prints one JSON
object:

- ``segment_class_acc``: share of segments whose music the SynthMV classifier (trained on real renders cut into
  ``--judge-window`` excerpts, plus their codec reconstructions) judges as the segment's class, with ``--cuts auto``;
- ``switch_latency_s``: median over cuts of the seconds until an excerpt starting after the cut is judged as the new
  class (``vmas.experiments.scene_scores.switch_latency``; a cut that never switches counts with its last offset tried);
- ``seam_flux_ratio``: spectral flux at seams (the cuts and every window seam) over the flux elsewhere
  (``vmas.structure.seam_flux_ratio``; 1 = a seam is as eventful as any moment of the music);
- ``hits_within_50ms``: share of requested hits (``--hits``, random times) with an onset within +-50 ms;
- ``baselines``: ``plain`` (today's continuation, ``--cuts none``), ``own_music`` (the clip's own soundtrack),
  ``label_cuts`` (the true cut times as a locked edit) and ``hits_chance`` (the same hit times scored on music made
  without ``--hits``: how often an onset is there anyway);
- ``selection``: the crossfade length chosen on a separate selection set (lowest seam flux at the cuts), then the hit
  grid's tempo source and whether a motion-conditioned model keeps the picture's motion curve beside it (most hits);
- ``meta``: command, commit, seeds, date, machine and load.

Metrics are ``{mean, std}`` over sampling seeds. Generated music is cached under ``--out``, per model weights (rerun =
reuse). Default size: 3 selection + 6 test videos of 24 s with 3 scenes, one sampling seed.

    python tools/structure_benchmark.py --json > docs/results/structure.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing as tp
from pathlib import Path

import numpy as np

from vmas import structure
from vmas.data import media
from vmas.experiments import aggregate, scene_scores, scoring

ROOT = Path(__file__).resolve().parent.parent


def generate(pipe, clip: dict, out: Path, seed: int, **controls) -> np.ndarray:
    """Music for one clip through ``generate_for_video`` (cached as ``out/<id>.wav``) -> float [N] at the codec's
    rate."""
    from vmas.generate import generate_for_video

    wav = out / f"{clip['id']}.wav"
    if not wav.exists():
        generate_for_video(clip["video"], pipe, out, seed=seed, mix="replace", loudness=None, **controls)
        (out / f"{clip['id']}.mp4").unlink(missing_ok=True)
    return media.read_audio(wav, sr=pipe.codec.sample_rate).numpy().reshape(-1)


def over_seeds(runs: tp.Sequence[tp.Dict[str, float]]) -> tp.Dict[str, tp.Any]:
    """{metric: {mean, std, runs}} over sampling seeds (NaN metrics dropped)."""
    return aggregate.over_sampling_seeds(runs, digits=4, drop_nan=True, single=False)


def quietest_cuts(tried: tp.Mapping[float, tp.Mapping[str, tp.Any]]) -> float:
    """The crossfade whose cuts have the lowest seam flux ratio (rounded to 0.01; ties: the shorter one)."""
    return min(tried, key=lambda f: (round(tried[f].get("seam_flux_ratio_cuts", {}).get("mean", 1e9), 2), f))


def most_hits(tried: tp.Mapping[str, tp.Mapping[str, tp.Any]]) -> str:
    """Where a hit grid's tempo comes from when none is requested, and whether the motion curve stays beside it
    (``tempo/motion``): the pair placing most hits within 50 ms (ties: the first tried, picture/keep)."""
    return max(tried, key=lambda t: tried[t].get("hits_within_50ms", {}).get("mean", 0.0))


def hits_dir(choice: str) -> str:
    """Cache folder part of a ``tempo/motion`` choice (``picture``, ``picture_motionoff``, ...)."""
    tempo, motion = choice.split("/")
    return tempo if motion == "keep" else f"{tempo}_motionoff"


def run_method(pipe, clips, out: Path, seeds, classifier, args, cuts: str, crossfade: float,
               with_hits: bool = False, score_hits: bool = False, hits_tempo: str = "picture/keep"
               ) -> tp.Dict[str, tp.Any]:
    """Generate (cached) and score one method on ``clips`` for every sampling seed."""
    runs = []
    for seed in seeds:
        per_clip = []
        for i, clip in enumerate(clips):
            hits = scene_scores.draw_hits(clip, i, args.hits) if (with_hits or score_hits) else []
            cut_arg = ",".join(f"{c:g}" for c in clip["cuts"]) if cuts == "labels" else cuts
            # the options under test: generate_sections reads these module defaults at call time
            structure.CROSSFADE_S = crossfade
            structure.HITS_TEMPO, structure.HITS_MOTION = hits_tempo.split("/")
            wav = generate(pipe, clip, out / f"seed{seed}", seed, cuts=cut_arg,
                           hits=",".join(f"{h:g}" for h in hits) if with_hits else None)
            used = structure.resolve_cuts(cut_arg, clip["video"], clip["seconds"])
            seams = scene_scores.seam_times(clip, used, pipe, pipe.spec.window_seconds / 2, crossfade)
            per_clip.append(scene_scores.clip_scores(wav, pipe.codec.sample_rate, clip, classifier, args.judge_window,
                                                     seams, hits))
        runs.append(scene_scores.summary(per_clip))
    return over_seeds(runs)


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (else a short table)")
    p.add_argument("--out", default=str(ROOT / "runs" / "structure_bench"), help="cache folder (data, music)")
    p.add_argument("--model", default="vmas-synthmv-demo")
    p.add_argument("--select", type=int, default=3, help="selection videos (choose the crossfade)")
    p.add_argument("--test", type=int, default=6, help="held-out test videos")
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--seconds", type=float, default=24.0)
    p.add_argument("--seeds", default="0", help="sampling seeds (comma-separated; several give {mean, std})")
    p.add_argument("--hits", type=int, default=4, help="hit points per video")
    p.add_argument("--crossfades", default="0.02,0.08,0.2", help="crossfade lengths (s) tried on the selection set")
    p.add_argument("--judge-window", type=float, default=2.0, help="seconds of music the class judge hears")
    p.add_argument("--per-class", type=int, default=8, help="renders per class for the judge")
    args = p.parse_args(argv)
    t0 = time.time()
    from vmas.experiments.provenance import weights_sha256
    from vmas.hub import load_model

    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    pipe = load_model(args.model)
    sr = pipe.codec.sample_rate
    # generated music is cached per model *weights*: a retrained model under the same name never reuses old music
    weights = weights_sha256({**pipe.model.state_dict(), **{f"codec.{k}": v for k, v in pipe.codec.state_dict().items()}})
    music = out / f"music_{weights[:12]}"

    classifier, _ = scoring.synthmv_judge(pipe, per_class=args.per_class, seconds=10.0, window=args.judge_window)
    select = scene_scores.multiscene_clips(out / "select", args.select, 101, args.scenes, args.seconds)
    test = scene_scores.multiscene_clips(out / "test", args.test, 202, args.scenes, args.seconds)

    # selection split first (rules: quietest_cuts, most_hits); the test split is then scored with the choices only
    tried = {float(fade): run_method(pipe, select, music / "select_runs" / f"auto_xf{float(fade):g}", seeds[:1],
                                     classifier, args, "auto", float(fade)) for fade in args.crossfades.split(",")}
    chosen = aggregate.choose(tried, quietest_cuts)
    tempo_tried = {t: run_method(pipe, select, music / "select_runs" / f"auto_hits_{hits_dir(t)}_xf{chosen:g}",
                                 seeds[:1], classifier, args, "auto", chosen, with_hits=True, hits_tempo=t)
                   for t in ("picture/keep", "hits/keep", "picture/off", "hits/off")}
    hits_tempo = aggregate.choose(tempo_tried, most_hits)

    runs = music / "test_runs"
    auto = run_method(pipe, test, runs / f"auto_xf{chosen:g}", seeds, classifier, args, "auto", chosen)
    plain = run_method(pipe, test, runs / "plain", seeds, classifier, args, "none", chosen, score_hits=True)
    labels = run_method(pipe, test, runs / f"labels_xf{chosen:g}", seeds, classifier, args, "labels", chosen,
                        score_hits=True)
    hits = run_method(pipe, test, runs / f"auto_hits_{hits_dir(hits_tempo)}_xf{chosen:g}", seeds, classifier, args,
                      "auto", chosen, with_hits=True, hits_tempo=hits_tempo)
    chance = run_method(pipe, test, runs / f"auto_xf{chosen:g}", seeds, classifier, args, "auto", chosen,
                        score_hits=True)
    own_music = over_seeds([scene_scores.summary([  # the clip's own soundtrack: cuts are its only seams
        scene_scores.clip_scores(media.read_audio(clip["video"], sr=sr).numpy().reshape(-1), sr, clip, classifier,
                                 args.judge_window, {"cuts": clip["cuts"], "windows": []},
                                 scene_scores.draw_hits(clip, i, args.hits)) for i, clip in enumerate(test)])])

    def pick(res, key):
        return res.get(key, {"mean": None, "std": None})

    result = {
        "segment_class_acc": pick(auto, "segment_class_acc"),
        "switch_latency_s": pick(auto, "switch_latency_s"),
        "seam_flux_ratio": pick(auto, "seam_flux_ratio"),
        "hits_within_50ms": pick(hits, "hits_within_50ms"),
        "details": {"cuts_auto": auto, "cuts_auto_with_hits": hits,
                    "detection": {"select": scene_scores.cut_detection(select),
                                  "test": scene_scores.cut_detection(test)}},
        "baselines": {"plain": plain, "own_music": own_music, "label_cuts": labels,
                      "hits_chance": pick(chance, "hits_within_50ms")},
        "selection": {"crossfade_s": chosen, "tried": {f"{f:g}": r for f, r in tried.items()},
                      "rule": aggregate.rule_text(quietest_cuts), "hits_tempo": hits_tempo,
                      "hits_tempo_tried": tempo_tried, "hits_tempo_rule": aggregate.rule_text(most_hits)},
        "meta": aggregate.result_meta(
            "structure_benchmark", argv, model=args.model, model_weights_sha256=weights, sampling_seeds=seeds,
            data_seeds={"select": 101, "test": 202}, hit_seed=4242, test_videos=len(test),
            select_videos=len(select), scenes=args.scenes, seconds=args.seconds, judge_window_s=args.judge_window,
            omp_num_threads=os.environ.get("OMP_NUM_THREADS"), wall_s=round(time.time() - t0, 1)),
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, res in [("cuts auto", auto), ("label cuts", labels), ("plain", plain), ("own music", own_music)]:
            row = {k: pick(res, k)["mean"] for k in ("segment_class_acc", "switch_latency_s", "seam_flux_ratio")}
            print(f"{name:12s} {row}")
        print(f"hits within 50 ms: {pick(hits, 'hits_within_50ms')} (chance {pick(chance, 'hits_within_50ms')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
