"""SynthMV-specific scores (issue 10): onset-to-event F1 and the class classifier's accuracy.

SynthMV labels every visual event time, and every event is a note onset in the real music, so a model whose music
follows the picture puts onsets at those times. The class classifier (``vmas.synthmv.SynthMVClassifier``,
kNN on log-mel statistics of real SynthMV renders) judges whether the instrument/key/tempo family matches the
video's scene class.
"""
from __future__ import annotations

import typing as tp

import numpy as np

from vmas import alignment
from vmas.metrics.onsets import onset_f1  # noqa: F401 - part of this module's API


def onset_times(wav: np.ndarray, sr: int) -> np.ndarray:
    """Onset times (s) at 10 ms hops (:func:`vmas.alignment.onset_times`)."""
    return alignment.onset_times(wav, sr, hop_length=max(1, sr // 100))


def score(wavs: tp.Sequence[np.ndarray], sr: int, clips: tp.Sequence[dict], classifier,
          seconds: tp.Optional[float] = None) -> tp.Dict[str, float]:
    """MV-Align, onset F1 (±50 ms) and class accuracy of ``wavs`` against the first ``seconds`` of each clip.

    ``clips``: rows of :func:`vmas.evaluation.load_synthmv_clips` (``video``, ``id``, ``events``, ``class_id``);
    ``classifier``: anything with ``predict(wavs, sr) -> class ids`` (the SynthMV classifier)."""
    from vmas.metrics.mv_align import MVAlign, read_video_frames

    mv = MVAlign(flow="farneback")
    f1s = []
    for wav, clip in zip(wavs, clips):
        seconds_i = seconds or len(wav) / sr
        frames, fps = read_video_frames(clip["video"], duration=seconds_i)  # uint8 [T, H, W, 3], native fps
        mv.update_media(wav, sr, frames, fps, clip["id"])
        events = [t for t in clip["events"] if t < seconds_i]
        f1s.append(onset_f1(onset_times(wav, sr), events, tol=0.05))
    pred = classifier.predict(list(wavs), sr)
    acc = float(np.mean(pred == np.array([c["class_id"] for c in clips])))
    return {"mv_align": mv.compute(), "onset_f1": float(np.mean(f1s)), "class_acc": acc}


def mean_std(runs: tp.Sequence[tp.Dict[str, float]]) -> tp.Dict[str, tp.Any]:
    """[{metric: value}] over sampling seeds -> {metric: value} for one run, else {metric: {mean, std, runs}}."""
    if len(runs) == 1:
        return dict(runs[0])
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs])),
                "runs": [round(float(r[k]), 4) for r in runs]} for k in runs[0]}
