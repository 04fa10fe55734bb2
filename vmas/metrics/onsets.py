"""Onset F1: how many detected onsets land on reference onsets (or labelled events), within a tolerance.

One implementation for every caller (codec reconstructions in ``tools/train_codec.py``, music vs SynthMV's visual
events in ``vmas.experiments.scoring``): ``mir_eval.onset.f_measure``, the MIR community's reference, which counts
a maximum one-to-one matching of onsets within ``±tol`` (inclusive).
"""
from __future__ import annotations

import typing as tp

import numpy as np


def onset_times_10ms(wav: np.ndarray, sr: int) -> np.ndarray:
    """Onset times (s) of ``wav`` at 10 ms hops (:func:`vmas.alignment.onset_times` with hop ``sr // 100``): the
    onsets every onset-F1 and hit score compares with labelled events; training's onsets use the codec's hop."""
    from vmas.alignment import onset_times

    return onset_times(wav, sr, hop_length=max(1, sr // 100))


def onset_f1(estimated: tp.Sequence[float], reference: tp.Sequence[float], tol: float = 0.05) -> float:
    """F1 = 2 |M| / (|estimated| + |reference|), M a maximum one-to-one matching with ``|e - r| <= tol`` seconds.

    F1 is symmetric, so the argument order only matters for reading. Both empty -> 1.0 (nothing to find, nothing
    found); one empty -> 0.0 (mir_eval returns 0 for both cases and warns).
    """
    import mir_eval

    e = np.sort(np.asarray(estimated, np.float64).reshape(-1))
    r = np.sort(np.asarray(reference, np.float64).reshape(-1))
    if len(e) == 0 and len(r) == 0:
        return 1.0
    if len(e) == 0 or len(r) == 0:
        return 0.0
    # + 1e-9: an onset exactly tol away counts even when the float subtraction lands a hair above tol
    return float(mir_eval.onset.f_measure(r, e, window=tol + 1e-9)[0])
