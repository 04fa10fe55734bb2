"""Beat grids (``beat [B, 2]`` = period frames, beat frame; NaN = none) from what a clip or a request offers:
"N BPM" tags, the music's onsets, or the picture's motion peaks.

Why a module above :mod:`vmas.modules.rhythm`: these parse tags (:mod:`vmas.tags.cleaner`) and decode video and run
optical flow (:mod:`vmas.data.media`, :mod:`vmas.alignment`), which an nn-module file must not do; the grid math
(:func:`~vmas.modules.rhythm.fit_grid`, :func:`~vmas.modules.rhythm.beat_features`) stays there on plain arrays.
The video grid uses the package's one Farneback motion curve (:func:`vmas.alignment.farneback_pair_motion`).
"""
from __future__ import annotations

import typing as tp

import torch

from vmas.alignment import video_beats, video_motion
from vmas.data import media
from vmas.modules.rhythm import FIRST_BEAT_S, fit_grid
from vmas.tags.cleaner import parse_bpm


def tags_bpm(tags: tp.Iterable[str]) -> tp.Optional[float]:
    """The tempo of the first ``"N BPM"`` tag in a tag list (None if there is none)."""
    for tag in tags:
        bpm = parse_bpm(tag)
        if bpm is not None:
            return bpm
    return None


def clip_grids(onsets: torch.Tensor, tag_lists: tp.Sequence[tp.Sequence[str]], frame_rate: float) -> torch.Tensor:
    """Training grids: onsets bool [B, T] (music onsets on the code grid) + each clip's tags -> beat [B, 2]
    (NaN where neither a tempo tag nor enough onsets give a tempo)."""
    out = torch.full((onsets.shape[0], 2), float("nan"))
    for b, tags in enumerate(tag_lists):
        grid = fit_grid(onsets[b].bool().cpu().numpy(), frame_rate, tags_bpm(tags))
        if grid is not None:
            out[b] = torch.tensor(grid)
    return out


def video_grid(video: tp.Any, seconds: float, frame_rate: float, bpm: tp.Optional[float] = None,
               fps: float = 25.0, size: int = 64) -> tp.Optional[tp.Tuple[float, float]]:
    """A grid read from the picture: motion peaks (Farneback flow at ``fps``, :func:`vmas.alignment.video_beats`)
    on the code grid, then :func:`fit_grid` (tempo from ``bpm`` if the user asked for one, else from the peaks).

    Why: the LM follows a grid far better than it reads timing from the video tokens (48 tokens per 10 s cannot
    place a note within 20 ms), so a grid fitted to the visual events puts the music's beats on the picture's.
    Assumes one tempo for the whole video. None for a video without clear motion peaks.
    """
    frames, _, _ = media.read_video_frames(video, fps=fps, size=size, start=0.0, duration=seconds)
    if frames.shape[0] < 3:
        return None
    num_frames = max(1, round(seconds * frame_rate))
    peaks = video_beats(video_motion(frames, flow="farneback"), num_frames=num_frames, fps=fps, frame_rate=frame_rate)
    return fit_grid(peaks.numpy(), frame_rate, bpm)


def video_grids(videos: tp.Sequence[tp.Any], seconds: tp.Union[float, tp.Sequence[float]], frame_rate: float,
                bpms: tp.Optional[tp.Sequence[tp.Optional[float]]] = None) -> torch.Tensor:
    """:func:`video_grid` for a batch -> beat [B, 2] (NaN rows where a video has no clear motion peaks)."""
    n = len(videos)
    secs = [seconds] * n if isinstance(seconds, (int, float)) else list(seconds)
    bpms = list(bpms) if bpms is not None else [None] * n
    grids = [video_grid(v, s, frame_rate, b) for v, s, b in zip(videos, secs, bpms)]
    return torch.tensor([g if g is not None else (float("nan"), float("nan")) for g in grids])


def request_grids(tag_lists: tp.Sequence[tp.Sequence[str]], frame_rate: float,
                  first_beat_s: float = FIRST_BEAT_S) -> tp.Optional[torch.Tensor]:
    """Inference grids from requested tags: beat [B, 2] with a grid for each list holding an ``"N BPM"`` tag, NaN
    rows for the others; None when no list asks for a tempo."""
    bpms = [tags_bpm(tags) for tags in tag_lists]
    if all(b is None for b in bpms):
        return None
    return torch.tensor([[60.0 * frame_rate / b, first_beat_s * frame_rate] if b else [float("nan")] * 2
                         for b in bpms])
