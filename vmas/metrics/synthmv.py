"""SynthMV-specific scores (issue 10): onset-to-event F1 and the class classifier's accuracy.

SynthMV labels every visual event time, and every event is a note onset in the real music, so a model whose music
follows the picture puts onsets at those times. The class classifier (``datasets.synthmv.SynthMVClassifier``,
kNN on log-mel statistics of real SynthMV renders) judges whether the instrument/key/tempo family matches the
video's scene class.
"""
from __future__ import annotations

import typing as tp

import numpy as np

from vmas.metrics.mv_align import match_peaks


def onset_times(wav: np.ndarray, sr: int) -> np.ndarray:
    """Onset times (s) from librosa's onset detector (10 ms hop, backtracking off)."""
    import librosa

    wav = np.asarray(wav, np.float32).reshape(-1)
    hop = max(1, sr // 100)
    frames = librosa.onset.onset_detect(y=wav, sr=sr, hop_length=hop, units="frames")
    return frames.astype(np.float64) * hop / sr


def onset_f1(onsets: tp.Sequence[float], events: tp.Sequence[float], tol: float = 0.05) -> float:
    """F1 of one-to-one matches between detected onsets and event times within ``tol`` seconds.

    Both empty -> 1.0 (nothing to find, nothing found); one empty -> 0.0.
    """
    a, e = np.sort(np.asarray(onsets, np.float64)), np.sort(np.asarray(events, np.float64))
    if len(a) == 0 and len(e) == 0:
        return 1.0
    if len(a) == 0 or len(e) == 0:
        return 0.0
    hits = match_peaks(a, e, tol + 1e-9)  # inclusive: an onset exactly tol away counts
    return 2.0 * hits / (len(a) + len(e))
