"""Scores of music made for multi-scene videos: does it follow the picture's cuts and hit points (issue 22,
``tools/structure_benchmark.py``)? Moved out of ``vmas.structure`` (issue 33): the product cuts and joins, this
module judges.

The clips are multi-scene SynthMV renders (:func:`multiscene_clips`): the scene class, hence instrument, key and
tempo, changes at each labelled cut. The SynthMV class judge (``vmas.experiments.scoring.synthmv_judge``) hears
short excerpts (:func:`judge_windows`) to decide each segment's class and how soon after a cut the music switches.
"""
from __future__ import annotations

import json
import typing as tp
from pathlib import Path

import numpy as np

from vmas.metrics.onsets import onset_times_10ms


def multiscene_clips(out: Path, num: int, seed: int, scenes: int, seconds: float) -> tp.List[dict]:
    """Multi-scene SynthMV clips (made once, reused): rows with ``video`` and the labels."""
    from vmas.synthmv import generate_dataset

    manifest = out / "manifest.jsonl"
    if not manifest.exists() or sum(1 for _ in open(manifest)) != num:
        generate_dataset(out, num, seed=seed, seconds=seconds, scenes=scenes, workers=1, split=out.name)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [dict(json.loads((out / r["labels"]).read_text()), video=str(out / r["path"]), id=r["id"]) for r in rows]


def draw_hits(clip: dict, index: int, num: int, gap: float = 1.5) -> tp.List[float]:
    """``num`` hit times (s, 10 ms grid) in [1, seconds - 1], at least ``gap`` apart; fixed per clip."""
    rng = np.random.default_rng([4242, index])
    hits: tp.List[float] = []
    while len(hits) < num:
        t = round(float(rng.uniform(1.0, clip["seconds"] - 1.0)), 2)
        if all(abs(t - h) >= gap for h in hits):
            hits.append(t)
    return sorted(hits)


def cut_detection(clips: tp.Sequence[dict], tol: float = 0.041) -> tp.Dict[str, float]:
    """Precision and recall of :func:`vmas.structure.detect_cuts` against the labelled cuts (``tol``: +-1 frame
    at 25 fps)."""
    from vmas import structure

    tp_ = fp = fn = 0
    for c in clips:
        found = structure.detect_cuts(c["video"], c["seconds"])
        hit = [any(abs(f - t) <= tol for f in found) for t in c["cuts"]]
        tp_ += sum(hit)
        fn += len(hit) - sum(hit)
        fp += sum(not any(abs(f - t) <= tol for t in c["cuts"]) for f in found)
    return {"precision": tp_ / max(1, tp_ + fp), "recall": tp_ / max(1, tp_ + fn), "cuts": tp_ + fn}


def seam_times(clip: dict, cuts: tp.Sequence[float], pipe, stride_s: float, crossfade: float) -> tp.Dict[str, list]:
    """Seam times (s) of a run: the middle of each cut's crossfade, and every continuation window's first new frame
    (``vmas.structure.section_windows``, the same plan generation used)."""
    from vmas import structure

    fr = pipe.codec.frame_rate
    window, stride = round(pipe.spec.window_seconds * fr), round(stride_s * fr)
    overlap = max(1, round(crossfade * fr)) if cuts else 0
    total = round(clip["seconds"] * fr)
    win = []
    for sec in structure.section_windows(total, window, stride, [round(c * fr) for c in cuts], overlap):
        win += [(s + (window - stride)) / fr for s, _ in sec.windows[1:]]
    return {"cuts": [c + overlap / fr / 2 for c in cuts], "windows": win}


def judge_windows(wav: np.ndarray, sr: int, start: float, end: float, window: float, hop: float
                  ) -> tp.List[tp.Tuple[float, np.ndarray]]:
    """[(window start s, samples)] of ``window``-second excerpts of ``wav`` inside ``[start, end]`` every ``hop``
    s (at least one, clipped to the span when it is shorter than a window)."""
    n = round(window * sr)
    out = []
    t = start
    while True:
        a = round(t * sr)
        b = min(a + n, round(end * sr), wav.size)
        if b - a >= sr // 4:
            out.append((t, wav[a:b]))
        t += hop
        if t + window > end + 1e-6:
            break
    return out


def segment_classes(wav: np.ndarray, sr: int, segments: tp.Sequence[dict], classifier: tp.Any,
                    window: float = 2.0) -> tp.List[int]:
    """The class each segment's music is judged as: the classifier's class shares (``classifier.scores``)
    averaged over ``window``-second excerpts at half-window hops across the segment, then the largest."""
    out = []
    for seg in segments:
        pieces = [w for _, w in judge_windows(wav, sr, seg["start"], seg["end"], window, window / 2)]
        out.append(int(np.asarray(classifier.scores(pieces, sr)).mean(axis=0).argmax()))
    return out


def switch_latency(wav: np.ndarray, sr: int, cut: float, end: float, new_class: int, classifier: tp.Any,
                   window: float = 2.0, step: float = 0.1) -> tp.Tuple[float, bool]:
    """(seconds after ``cut`` until the music is judged as ``new_class``, switched): the start offset of the first
    ``window``-second excerpt after the cut that the classifier assigns to the new class, tried every ``step`` s
    while the excerpt stays inside the segment (``end``). Never switching gives the last offset tried and False
    (a censored value: the true latency is longer)."""
    tried = judge_windows(wav, sr, cut, end, window, step)
    preds = classifier.predict([w for _, w in tried], sr)
    for (t, _), p in zip(tried, preds):
        if int(p) == new_class:
            return round(t - cut, 3), True
    return round(tried[-1][0] - cut, 3) if tried else 0.0, False


def hits_within(onsets: tp.Sequence[float], hits: tp.Sequence[float], tol: float = 0.05) -> float:
    """Share of ``hits`` with an onset within ``tol`` s (NaN without hits)."""
    if not len(hits):
        return float("nan")
    on = np.asarray(onsets, np.float64)
    return float(np.mean([bool(on.size) and float(np.abs(on - h).min()) <= tol for h in hits]))


def clip_scores(wav: np.ndarray, sr: int, clip: dict, classifier, judge_window: float, seams: tp.Dict[str, list],
          hits: tp.Sequence[float] = ()) -> tp.Dict[str, tp.Any]:
    """Every metric of one clip's music: segments judged right, switch latency per cut, seam flux ratios (all
    seams, cuts, windows) and the share of ``hits`` with an onset within 50 ms."""
    from vmas.structure import seam_flux_ratio

    segs = clip["segments"]
    pred = segment_classes(wav, sr, segs, classifier, judge_window)
    lat = [switch_latency(wav, sr, s["start"], s["end"], s["class_id"], classifier, judge_window)
           for s in segs[1:]]
    every = seams["cuts"] + seams["windows"]
    return {"segment_correct": [int(p == s["class_id"]) for p, s in zip(pred, segs)],
            "latency": [t for t, _ in lat], "switched": [ok for _, ok in lat],
            "flux_all": seam_flux_ratio(wav, sr, every) if every else float("nan"),
            "flux_cuts": seam_flux_ratio(wav, sr, seams["cuts"]) if seams["cuts"] else float("nan"),
            "flux_windows": seam_flux_ratio(wav, sr, seams["windows"]) if seams["windows"] else float("nan"),
            "hits": hits_within(onset_times_10ms(wav, sr), hits) if len(hits) else float("nan")}


def summary(per_clip: tp.Sequence[dict]) -> tp.Dict[str, float]:
    """Clip scores (:func:`clip_scores`) of one sampling seed -> the benchmark's numbers."""
    def nanmean(key):
        vals = [c[key] for c in per_clip if not np.isnan(c[key])]
        return float(np.mean(vals)) if vals else float("nan")

    lat = [t for c in per_clip for t in c["latency"]]
    return {"segment_class_acc": float(np.mean([x for c in per_clip for x in c["segment_correct"]])),
            "switch_latency_s": float(np.median(lat)) if lat else float("nan"),
            "switched_share": float(np.mean([x for c in per_clip for x in c["switched"]])) if lat else float("nan"),
            "seam_flux_ratio": nanmean("flux_all"), "seam_flux_ratio_cuts": nanmean("flux_cuts"),
            "seam_flux_ratio_windows": nanmean("flux_windows"), "hits_within_50ms": nanmean("hits")}
