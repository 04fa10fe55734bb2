"""Beat-grid condition: a requested tempo as a per-step signal the music LM can follow.

Why: a tempo tag such as ``"96 BPM"`` reaches the LM only as a sentence embedding, and sentence encoders barely
separate numbers ("92 BPM" and "104 BPM" are near neighbours), so the tag alone cannot set the distance between
notes. On SynthMV the tag-only model placed notes at a tempo of its own (14-17 % of requests within 8 %). Following
MusiConGen (Lan et al., 2024), which adds a frame-level rhythm condition to MusicGen for tempo control, the tempo is
turned into a *beat grid* and every LM step gets the grid's phase at its frame (added to the LM input like the
per-step video path): "a note starts where the phase wraps" is then a local rule instead of a count the model must
keep.

A grid is two numbers per clip, ``beat = (period, first)``: frames per beat (``60 * frame_rate / bpm``) and the
frame of one beat (any beat; the grid extends both ways). NaN rows mean "no grid" and give a zero condition, which
is also what the CFG branches and dropped training clips see.

- Training: ``period`` comes from the clip's ``"N BPM"`` tag (else it is estimated from the music onsets) and
  ``first`` is fitted to the music onsets (:func:`fit_first_beat`), so the grid describes the clip's own music.
- Inference: ``period`` from the user's tempo, ``first`` at :data:`FIRST_BEAT_S`; or, with
  ``generation.beat_from_video``, both fitted to the picture's motion peaks (a requested tempo keeps its period).

This file holds the grid math on plain arrays; turning tags, music onsets and videos into grids
(:func:`vmas.beat_grids.clip_grids`, :func:`~vmas.beat_grids.request_grids`, :func:`~vmas.beat_grids.video_grids`)
lives above the modules in :mod:`vmas.beat_grids`, because it parses tags and decodes video.
"""
from __future__ import annotations

import math
import typing as tp

import numpy as np
import torch

FIRST_BEAT_S = 0.25
"""Where a requested grid puts its first beat at inference (seconds from the start of the video)."""
NUM_FEATURES = 5
"""Per-step features: sin/cos of the beat phase, sin/cos of twice the phase (off-beat eighths), grid present."""


def beat_features(beat: tp.Optional[torch.Tensor], num_steps: int, start: int = 0) -> tp.Optional[torch.Tensor]:
    """beat [B, 2] (period frames, beat frame; NaN = no grid), or per-frame grids [B, N, 2] of the whole video,
    -> features [B, num_steps, 5] for frames
    ``start .. start + num_steps - 1`` (LM step ``s`` predicts frame ``s`` of the first codebook). Zero rows where
    there is no grid."""
    if beat is None:
        return None
    beat = beat.float()
    frames = torch.arange(num_steps, device=beat.device, dtype=torch.float32) + start  # [S]
    if beat.dim() == 3:  # per-frame grids [B, N, 2] (a bent grid, vmas.structure.hit_grid): row f holds frame f's
        rows = frames.long().clamp(0, beat.shape[1] - 1)  # frames past the end keep the last row
        beat = beat[:, rows]  # [B, S, 2]
    else:
        beat = beat[:, None].expand(-1, num_steps, -1)  # [B, S, 2]
    has = torch.isfinite(beat).all(dim=-1)  # [B, S]
    period = torch.where(has, beat[..., 0], torch.ones_like(beat[..., 0]))
    first = torch.where(has, beat[..., 1], torch.zeros_like(beat[..., 1]))
    phase = 2 * math.pi * (frames[None] - first) / period  # [B, S] radians, 0 on each beat
    feats = torch.stack([phase.sin(), phase.cos(), (2 * phase).sin(), (2 * phase).cos(), torch.ones_like(phase)], -1)
    return feats * has[..., None].float()


def _best_offset(frames: np.ndarray, period: float, resolution: float = 0.25,
                 width: float = 1.0) -> tp.Tuple[float, float]:
    """(offset in ``[0, period)``, score) of the grid of ``period`` frames that best explains onset ``frames`` [N].

    Score of an offset: sum over onsets of ``exp(-(d / width)^2)``, ``d`` the distance (frames) to the nearest grid
    line."""
    offsets = np.arange(0.0, period, resolution)  # [O]
    d = np.mod(frames[None, :] - offsets[:, None], period)  # [O, N] in [0, period)
    d = np.minimum(d, period - d)
    scores = np.exp(-((d / width) ** 2)).sum(axis=1)  # [O]
    best = int(np.argmax(scores))
    return float(offsets[best]), float(scores[best])


def _onset_frames(onsets: np.ndarray) -> np.ndarray:
    """A bool mask over frames or an array of frame indices -> float frame indices."""
    onsets = np.asarray(onsets)
    return np.flatnonzero(onsets).astype(np.float64) if onsets.dtype == bool else onsets.astype(np.float64)


def fit_first_beat(onsets: np.ndarray, period: float, resolution: float = 0.25, width: float = 1.0) -> float:
    """Frame (in ``[0, period)``) of the beat grid of ``period`` frames that best explains the onset frames
    (:func:`_best_offset`); on-beat notes outnumber off-beat ones in metrical music, so the on-beat grid wins over
    the half-shifted one. ``onsets`` is a bool mask over frames (the shards' ``music_beats``) or frame indices.
    """
    frames = _onset_frames(onsets)
    return _best_offset(frames, period, resolution, width)[0] if frames.size else 0.0


def estimate_period(onsets: np.ndarray, frame_rate: float,
                    bpm_range: tp.Tuple[float, float] = (60.0, 180.0)) -> tp.Optional[float]:
    """Frames per beat from an onset mask by autocorrelation of the onset train (None with fewer than 3 onsets).
    Used for clips without a ``"N BPM"`` tag."""
    x = np.asarray(onsets, dtype=np.float64)
    if x.sum() < 3:
        return None
    x = np.convolve(x, [0.25, 0.5, 1.0, 0.5, 0.25], mode="same")  # tolerate +-2 frames of jitter
    ac = np.correlate(x, x, mode="full")[x.size - 1:]
    lo, hi = 60 * frame_rate / bpm_range[1], 60 * frame_rate / bpm_range[0]
    lags = np.arange(int(math.floor(lo)), min(int(math.ceil(hi)) + 1, x.size))
    if lags.size == 0:
        return None
    return float(lags[np.argmax(ac[lags])])


def fit_grid(onsets: np.ndarray, frame_rate: float, bpm: tp.Optional[float] = None,
             refine: float = 0.04) -> tp.Optional[tp.Tuple[float, float]]:
    """(period, first) of the grid that best explains an onset mask [T]; None when there are too few onsets.

    The period is ``bpm``'s when given. Otherwise the autocorrelation's whole-frame lag is refined jointly with the
    phase over ``+-refine`` of it in 0.05-frame steps (a whole-frame period drifts by up to half a frame per beat,
    which moves the grid off the notes within a few bars)."""
    frames = _onset_frames(np.asarray(onsets, dtype=bool))
    if bpm:
        period = 60.0 * frame_rate / bpm
        return (period, _best_offset(frames, period)[0]) if frames.size else None
    period = estimate_period(onsets, frame_rate)
    if period is None:
        return None
    best = (-1.0, period, 0.0)  # (score, period, first)
    for p in np.arange(period * (1 - refine), period * (1 + refine) + 1e-9, 0.05):
        first, score = _best_offset(frames, p)
        best = max(best, (score, p, first))
    return float(best[1]), float(best[2])
