"""Music that follows the picture's structure (issue 22): scene cuts become section boundaries, hit points become
accents.

- **Cuts.** :func:`detect_cuts` finds scene changes from colour distributions (:func:`cut_scores`); ``--cuts T1,T2``
  (a locked edit) wins over detection (:func:`resolve_cuts`). :func:`section_windows` turns the cuts into a window
  plan: each scene is a *section* generated from scratch on its own frames (the first window after a cut gets no
  prompt, so the old scene's material is not carried on), continued window by window inside the section as plain
  generation does. Sections are decoded separately and joined by a short equal-power crossfade
  (:func:`join_sections`): the previous section runs :data:`CROSSFADE_S` past the cut and fades out while the new
  one fades in, so the seam has no click (:func:`seam_flux_ratio` measures that).
- **Hits.** :func:`hit_grid` bends the model's beat grid (the per-step beat-phase condition of
  ``model.lm.beat_condition``, :mod:`vmas.modules.rhythm`) so that a beat falls exactly on each requested time:
  between two hits the period is stretched to a whole number of beats. A model trained on metrical music starts a
  note on the beat, so the accent lands there. A model without the beat condition cannot honour hits and says so.

Why our own detector instead of PySceneDetect: PySceneDetect 0.7.2 (content, adaptive and histogram detectors,
defaults) was run on multi-scene SynthMV clips and reported every in-scene shot change (the palette flip every two
bars) as a cut: 11-15 cuts for 2 scene changes, which would restart the music every two bars. A scene (section)
change is a change of the colour *distribution*, which a flip (same colours, other places) and a flash (a few
frames brighter, then back) do not make; :func:`cut_scores` compares distributions across a few frames on each
side (trimmed colour quantiles), so flashes and flips stay below the threshold, and it needs no new dependency (OpenCV's video reader is
what :mod:`vmas.data.media` already uses).

Layer: data and signals (numpy/torch, :mod:`vmas.data.media`); the window loop takes the pipeline as a plain
value (:func:`generate_sections`), so it imports nothing from :mod:`vmas.generate`.
"""
from __future__ import annotations

import dataclasses
import math
import typing as tp

import numpy as np
import torch

from vmas.errors import VmasError

CROSSFADE_S = 0.2
"""Length of the equal-power crossfade at a cut (s), chosen on the selection set of ``tools/structure_benchmark.py``
from 0.02 / 0.08 / 0.2 s (lowest spectral flux at the cuts; docs/results/structure.json): the old section's notes
die away under the new scene's first note instead of stopping mid-cycle (a splice is broadband flux, a click)."""
CUT_THRESHOLD = 16.0
"""Colour change (mean shift of the colour quantiles, 0-255 levels) above which a frame starts a new scene. Chosen
on the selection set of ``tools/structure_benchmark.py`` as the geometric mean of the smallest scene change (35.9)
and the largest in-scene change (7.0, a palette flip next to a flash)."""
CUT_SPAN = 6
"""Frames compared on each side of a candidate cut (at 25 fps: 0.24 s, longer than a SynthMV flash's decay)."""
MIN_SCENE_S = 1.0
"""Cuts closer than this to the previous one (or to the start / end) are dropped: a section must be long enough to
carry a few notes."""
HITS_TEMPO = "picture"
"""Where the beat period of a hit grid comes from when the request has no tempo: ``"picture"`` (each scene's motion
peaks) or ``"hits"`` (the gaps between hits); chosen on the benchmark's selection set."""
QUANTILES = 32
"""Colour quantiles per channel, spread over the middle 80 % of the pixels (:func:`color_quantiles`)."""


# ---------------------------------------------------------------------------------------------------- detection
def color_quantiles(frames: tp.Any, num: int = QUANTILES, trim: float = 0.1) -> np.ndarray:
    """uint8 frames [T, H, W, 3] -> colour distribution of each frame, float64 [T, 3 * num]: per channel, the
    pixel values at ``num`` evenly spaced quantiles between ``trim`` and ``1 - trim``.

    Why quantiles and not a histogram: the mean absolute difference of two frames' quantiles is the 1-D Wasserstein
    distance per channel, in grey levels, so two dark palettes a few tens of levels apart still differ (a 4-bin
    histogram put both in one bin: a real cut scored 0.04 of 1). Why trimmed: a small object changing colour (a
    SynthMV shape, a caption) moves only the extreme quantiles, which are left out."""
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {x.shape}")
    levels = trim + (1 - 2 * trim) * (np.arange(num) + 0.5) / num  # [num]
    q = np.quantile(x.reshape(x.shape[0], -1, 3).astype(np.float64), levels, axis=1)  # [num, T, 3]
    return q.transpose(1, 2, 0).reshape(x.shape[0], -1)


def cut_scores(feats: np.ndarray, span: int = CUT_SPAN) -> np.ndarray:
    """Colour distributions [T, D] (:func:`color_quantiles`) -> scene-change score float [T] (grey levels):
    ``score[k]`` judges a cut between frames k-1 and k.

    ``score[k] = min over i in 1..span, j in 0..span-1 of mean|q[k-i] - q[k+j]|``: a cut changes *every* frame after
    it compared with *every* frame before it, whereas a flash (a few bright frames, then back), a frame of noise or
    a flash just before the cut leaves some pair of frames alike. Frames near the ends use the frames they have.
    ``score[0] = 0``.
    """
    T = feats.shape[0]
    out = np.zeros(T)
    for k in range(1, T):
        before = feats[max(0, k - span): k]  # [I, D]
        after = feats[k: min(T, k + span)]  # [J, D]
        out[k] = np.abs(before[:, None] - after[None]).mean(-1).min()
    return out


def pick_cuts(scores: np.ndarray, fps: float, threshold: float = CUT_THRESHOLD, min_gap_s: float = MIN_SCENE_S
              ) -> tp.List[float]:
    """Cut times (s, ``k / fps`` of the first frame of the new scene) from :func:`cut_scores`: frames above
    ``threshold``, strongest first, each at least ``min_gap_s`` from the others and from both ends."""
    T = scores.shape[0]
    gap = max(1, int(round(min_gap_s * fps)))
    chosen: tp.List[int] = []
    for k in np.argsort(-scores, kind="stable"):
        if scores[k] <= threshold:
            break
        if k < gap or T - k < gap or any(abs(int(k) - c) < gap for c in chosen):
            continue
        chosen.append(int(k))
    return [round(k / fps, 4) for k in sorted(chosen)]


def detect_cuts(video: tp.Any, seconds: tp.Optional[float] = None, fps: float = 25.0, size: int = 64,
                threshold: float = CUT_THRESHOLD, min_gap_s: float = MIN_SCENE_S) -> tp.List[float]:
    """Scene-change times (s) of the first ``seconds`` of ``video`` (all of it by default), from frames sampled at
    ``fps`` and shrunk to ``size`` (colour distributions need no detail)."""
    from vmas.data import media

    if seconds is None:
        seconds = media.probe_video(video).duration
    frames, _, _ = media.read_video_frames(video, fps=fps, size=size, start=0.0, duration=seconds)
    frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    return pick_cuts(cut_scores(color_quantiles(frames)), fps, threshold, min_gap_s)


# ------------------------------------------------------------------------------------------------ user requests
def parse_times(text: tp.Union[str, tp.Sequence[float], None], option: str) -> tp.List[float]:
    """``"12.5, 30"`` (seconds) or a list of numbers -> sorted unique times; a one-line error names ``option``."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            t = float(item)
        except (TypeError, ValueError):
            raise VmasError(f"{option}: {item!r} is not a time in seconds; give comma-separated seconds, e.g. "
                            f"{option} 12.5,30") from None
        if not math.isfinite(t) or t < 0:
            raise VmasError(f"{option}: times must be seconds >= 0, got {item!r}")
        out.append(t)
    return sorted(set(out))


def resolve_cuts(cuts: tp.Union[str, tp.Sequence[float], None], video: tp.Any, seconds: float) -> tp.List[float]:
    """The cut times (s) a request asks for: ``"none"`` / None -> none, ``"auto"`` -> :func:`detect_cuts`, else
    the user's own times (a locked edit wins over detection); times at 0 or past ``seconds`` are dropped."""
    if cuts is None or (isinstance(cuts, str) and cuts.strip().lower() in ("", "none")):
        return []
    if isinstance(cuts, str) and cuts.strip().lower() == "auto":
        return detect_cuts(video, seconds)
    return [t for t in parse_times(cuts, "--cuts") if 0 < t < seconds]


# -------------------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Section:
    """One scene's music in code frames: it owns ``[start, end)`` of the timeline and is generated over
    ``[start, stop)`` (``stop`` = ``end`` + the crossfade into the next section, clipped to the clip) in
    ``windows`` [(first frame, last frame + 1)] of the whole timeline; window 0 has no prompt."""

    start: int
    end: int
    stop: int
    windows: tp.Tuple[tp.Tuple[int, int], ...]


def section_windows(total: int, window: int, stride: int, cut_frames: tp.Sequence[int], overlap: int
                    ) -> tp.List[Section]:
    """The window plan with sections: each cut starts a fresh section; inside one, windows advance by ``stride``
    and re-read ``window - stride`` frames of context, exactly as plain continuation does (with no cuts this is
    one section with the plain plan). ``overlap``: frames each section runs past its end for the crossfade."""
    bounds = [0, *sorted({int(c) for c in cut_frames if 0 < int(c) < total}), total]
    sections = []
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        stop = min(total, s1 + overlap) if s1 < total else total
        plan = [(s0, min(s0 + window, stop))]
        while plan[-1][1] < stop:
            start = plan[-1][1] - (window - stride)
            plan.append((start, min(start + window, stop)))
        sections.append(Section(s0, s1, stop, tuple(plan)))
    return sections


def join_sections(wavs: tp.Sequence[np.ndarray], starts: tp.Sequence[int], total: int, fade: int) -> np.ndarray:
    """Mono section waveforms (section ``i`` begins at sample ``starts[i]`` and may run ``fade`` samples past the
    next start) -> one float32 waveform [total]: equal-power (sin/cos) crossfade over the ``fade`` samples after
    each later section's start. The fades sum to constant *power*, right for two unrelated signals (a linear fade
    would dip by 3 dB in the middle)."""
    out = np.zeros(total, np.float64)
    for i, (wav, s) in enumerate(zip(wavs, starts)):
        wav = np.asarray(wav, np.float64).reshape(-1)[: total - s].copy()
        n_in = min(fade, wav.size) if i > 0 else 0
        if n_in:  # fade in over the first `fade` samples
            wav[:n_in] *= np.sin(0.5 * np.pi * (np.arange(n_in) + 0.5) / fade)
        nxt = starts[i + 1] if i + 1 < len(starts) else None
        if nxt is not None:  # fade out over [next start, next start + fade), silence after
            a = nxt - s
            n_out = max(0, min(fade, wav.size - a))
            wav[a: a + n_out] *= np.cos(0.5 * np.pi * (np.arange(n_out) + 0.5) / fade)
            wav[a + n_out:] = 0.0
        out[s: s + wav.size] += wav
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------------- hits
def hit_grid(hits: tp.Sequence[float], num_frames: int, frame_rate: float,
             period: tp.Union[float, np.ndarray]) -> torch.Tensor:
    """A per-frame beat grid float [num_frames, 2] (period frames, beat frame; :func:`vmas.modules.rhythm.
    beat_features`) with a beat exactly on every hit time.

    Before the first hit and after the last the grid has ``period`` and a beat on that hit. Between hits ``a`` and
    ``b`` it has ``n = max(1, round((b - a) / period))`` beats of ``(b - a) / n`` frames: the tempo bends by at
    most half a beat over the gap, and the phase is continuous (every hit is a beat on both sides).
    ``period`` may be per frame (float [num_frames], e.g. each scene's own tempo, :func:`scene_periods`): a gap
    then takes the period at its first hit."""
    per = np.broadcast_to(np.asarray(period, np.float64), (num_frames,)).copy()
    if (per <= 0).any():
        raise ValueError("period must be positive")
    h = sorted(t * frame_rate for t in hits)
    grid = torch.empty(num_frames, 2, dtype=torch.float64)
    grid[:, 0], grid[:, 1] = torch.from_numpy(per), (h[0] if h else 0.0)
    f = torch.arange(num_frames, dtype=torch.float64)
    for a, b in zip(h[:-1], h[1:]):
        n = max(1, round((b - a) / per[min(int(a), num_frames - 1)]))
        inside = (f >= a) & (f < b)
        grid[inside, 0], grid[inside, 1] = (b - a) / n, a
    if h:
        grid[f >= h[-1], 1] = h[-1]
    return grid.float()


def scene_periods(video: tp.Any, seconds: float, frame_rate: float, bounds: tp.Sequence[int],
                  fallback: float) -> np.ndarray:
    """Beat period (frames) of each scene from the picture, per code frame float [bounds[-1]].

    ``bounds`` [0, cut frames..., total]: each scene's motion peaks (Farneback flow at 25 fps,
    :func:`vmas.alignment.video_beats`, as ``--beat-from-video`` reads them) -> :func:`vmas.modules.rhythm.fit_grid`
    period; ``fallback`` where a scene has too few peaks. Why: hits with no requested tempo still need a grid, and a
    grid at the scene's own pace keeps the music in the scene's tempo family (a foreign tempo costs class accuracy
    and puts beats where the model does not want to play)."""
    from vmas.alignment import video_beats, video_motion
    from vmas.data import media
    from vmas.modules.rhythm import fit_grid

    frames, _, _ = media.read_video_frames(video, fps=25.0, size=64, start=0.0, duration=seconds)
    peaks = video_beats(video_motion(frames, flow="farneback"), num_frames=bounds[-1], fps=25.0,
                        frame_rate=frame_rate).numpy()  # bool [total]
    out = np.full(bounds[-1], float(fallback))
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        grid = fit_grid(peaks[s0:s1], frame_rate)
        if grid is not None:
            out[s0:s1] = grid[0]
    return out


def hits_period(hits: tp.Sequence[float], frame_rate: float, bpm_range: tp.Tuple[float, float] = (60.0, 180.0),
                default_bpm: float = 100.0) -> float:
    """A beat period (frames) for hits when nothing else gives a tempo: the median gap between hits, halved or
    doubled into ``bpm_range`` (``default_bpm`` for fewer than two hits)."""
    gaps = np.diff(sorted(hits))
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        return 60.0 * frame_rate / default_bpm
    beat_s = float(np.median(gaps))
    while 60.0 / beat_s < bpm_range[0]:
        beat_s /= 2
    while 60.0 / beat_s > bpm_range[1]:
        beat_s *= 2
    return beat_s * frame_rate


def check_hits(hits: tp.Sequence[float], beat_condition: bool) -> None:
    """A one-line error when the model cannot place accents."""
    if hits and not beat_condition:
        raise VmasError("--hits needs a model with the beat-grid condition (model.lm.beat_condition: true), and this "
                        "model has none: drop --hits, or use vmas-synthmv-demo or a model trained with it")


# ----------------------------------------------------------------------------------------------- measurement
def spectral_flux(wav: np.ndarray, sr: int, n_fft: int = 1024, hop: int = 160) -> np.ndarray:
    """Positive spectral flux per STFT frame float [F] (frame f is centred at ``f * hop / sr`` s): the summed
    increase of log-magnitude from the previous frame. A click or a hard splice is a broadband jump, so it shows
    up here exactly like a loud note onset does."""
    x = np.asarray(wav, np.float64).reshape(-1)
    pad = np.pad(x, (n_fft // 2, n_fft // 2))
    F = 1 + (pad.size - n_fft) // hop
    idx = np.arange(n_fft)[None] + hop * np.arange(F)[:, None]  # [F, n_fft]
    mag = np.abs(np.fft.rfft(pad[idx] * np.hanning(n_fft)[None], axis=1))  # [F, n_fft/2+1]
    logm = np.log1p(100.0 * mag)
    flux = np.maximum(np.diff(logm, axis=0), 0).sum(axis=1)  # [F-1]
    return np.concatenate([[0.0], flux])


def seam_flux_ratio(wav: np.ndarray, sr: int, seams: tp.Sequence[float], radius: float = 0.05,
                    hop: int = 160) -> float:
    """Spectral flux at seams over flux inside: the mean of the peak flux within ``radius`` s of each seam time,
    over the mean of the same statistic at every other possible time at least ``2 * radius`` from any seam. 1 =
    a seam is as eventful as an ordinary moment of the music; a click or a hard splice gives several times that.
    NaN without seams."""
    flux = spectral_flux(wav, sr, hop=hop)
    t = np.arange(flux.size) * hop / sr
    r = max(1, int(round(radius * sr / hop)))
    padded = np.pad(flux, (r, r), mode="edge")
    peak = np.lib.stride_tricks.sliding_window_view(padded, 2 * r + 1).max(axis=1)  # [F]: max within +-radius
    seams = [s for s in seams if radius <= s <= t[-1] - radius]
    if not seams:
        return float("nan")
    at = np.array([peak[int(round(s * sr / hop))] for s in seams])
    far = np.ones(flux.size, bool)
    for s in seams:
        far &= np.abs(t - s) >= 2 * radius
    far &= (t >= radius) & (t <= t[-1] - radius)
    return float(at.mean() / max(peak[far].mean(), 1e-12))


# -------------------------------------------------------------------------------------------- the window loop
def _section_frames(video: tp.Any, spec: tp.Any, start_s: float, end_s: float) -> torch.Tensor:
    """The model's frames for a window starting at ``start_s``: frames at or after the section's end (the next
    scene) are replaced by the section's last frame, so a window never sees another scene. uint8 [T, H, W, 3]."""
    from vmas.data import media

    frames, ts, _ = media.read_video_frames(video, fps=spec.fps, size=spec.image_size, start=start_s,
                                            duration=spec.window_seconds)
    ts = np.asarray(ts)
    later = np.flatnonzero(ts >= end_s - 1e-3)
    if later.size and later[0] > 0:
        frames[later] = frames[later[0] - 1].clone()
    return frames


@torch.no_grad()
def generate_sections(pipe: tp.Any, video: tp.Any, num_frames: int, cuts: tp.Sequence[float],
                      hits: tp.Sequence[float], sampling: tp.Any, generator: torch.Generator, stride: int,
                      tag_emb: tp.Optional[torch.Tensor] = None, tag_mask: tp.Optional[torch.Tensor] = None,
                      neg_emb: tp.Optional[torch.Tensor] = None, neg_mask: tp.Optional[torch.Tensor] = None,
                      beat: tp.Optional[torch.Tensor] = None, crossfade_s: tp.Optional[float] = None,
                      hits_tempo: tp.Optional[str] = None) -> tp.Tuple[torch.Tensor, np.ndarray, int]:
    """Music for one video with sections at ``cuts`` and accents at ``hits`` -> (codes [K, num_frames] of the
    joined timeline, waveform float32 [samples], number of windows).

    ``pipe``: a :class:`vmas.pipeline.VMASPipeline`; ``beat`` [1, 2] the request's grid (tempo tag or picture) or
    None; tags as :func:`vmas.generate` builds them (batch of one). Each window is generated by ``pipe.model.generate``
    on its own section's frames; hits replace the grid by :func:`hit_grid` (period: the request's grid, else
    ``hits_tempo``: ``"picture"`` (each scene's pace, :func:`scene_periods`) or ``"hits"`` (the gaps between hits,
    :func:`hits_period`) when no tempo is requested; None = :data:`HITS_TEMPO`. ``crossfade_s`` None = :data:`CROSSFADE_S` as it is at call time (the benchmark sets
    the module value to try other lengths through the whole ``vmas generate`` path).
    """
    spec, codec = pipe.spec, pipe.codec
    fr = codec.frame_rate
    check_hits(hits, spec.beat_condition)
    hits_tempo = HITS_TEMPO if hits_tempo is None else hits_tempo
    window = round(spec.window_seconds * fr)
    overlap = max(1, round((CROSSFADE_S if crossfade_s is None else crossfade_s) * fr))
    sections = section_windows(num_frames, window, stride, [round(c * fr) for c in cuts], overlap)
    if hits:
        steps = num_frames + codec.n_q  # the grid covers the delay pattern's K-1 steps past the end too
        if beat is not None and torch.isfinite(beat[0]).all():  # a requested tempo (or --beat-from-video grid)
            period: tp.Union[float, np.ndarray] = float(beat[0, 0])
        elif hits_tempo == "picture":
            bounds = [0, *[s.end for s in sections[:-1]], steps]
            period = scene_periods(video, num_frames / fr, fr, bounds, hits_period(hits, fr))
        else:
            period = hits_period(hits, fr)
        beat = hit_grid(hits, steps, fr, period)[None]  # [1, N, 2]
    device = pipe.device
    parts, n_windows = [], 0
    for sec in sections:
        codes: tp.Optional[torch.Tensor] = None  # [1, K, t] of this section, from sec.start
        for start, end in sec.windows:
            frames = _section_frames(video, spec, start / fr, sec.end / fr)[None].to(device)  # [1, T, H, W, 3]
            prompt = None if codes is None else codes[:, :, start - sec.start:]
            out = pipe.model.generate(frames, num_frames=end - start, tag_emb=tag_emb, tag_mask=tag_mask,
                                      neg_emb=neg_emb, neg_mask=neg_mask, sampling=sampling, prompt=prompt,
                                      generator=generator, beat=beat, beat_start=start)  # [1, K, end - start]
            new = out if codes is None else out[:, :, codes.shape[-1] - (start - sec.start):]
            codes = new if codes is None else torch.cat([codes, new], dim=-1)
            n_windows += 1
        parts.append(codes[0])  # [K, stop - start]
    sr = codec.sample_rate
    wavs = [codec.decode(p[None].to(device))[0, 0].float().cpu().numpy() for p in parts]
    total = round(num_frames * sr / fr)
    wav = join_sections(wavs, [round(s.start * sr / fr) for s in sections], total, round(overlap * sr / fr))
    joined = torch.cat([p[:, : s.end - s.start] for p, s in zip(parts, sections)], dim=-1)  # [K, num_frames]
    return joined.cpu(), wav, n_windows


def generate_chunk(chunk: tp.Sequence[tp.Any], pipe: tp.Any, cuts: tp.Union[str, tp.Sequence[float], None],
                   hits: tp.Union[str, tp.Sequence[float], None], sampling: tp.Any, seed: int, stride: int, tag_emb: tp.Optional[torch.Tensor] = None, tag_mask: tp.Optional[torch.Tensor] = None,
                   neg_emb: tp.Optional[torch.Tensor] = None, neg_mask: tp.Optional[torch.Tensor] = None,
                   beat: tp.Optional[torch.Tensor] = None) -> int:
    """:func:`generate_sections` for each job of a :mod:`vmas.generate` batch (one video at a time: each has its
    own cuts): sets ``job.codes`` [K, T] and ``job.audio`` (the crossfaded music, float32 [N]); returns the largest
    number of windows. Tensors are the batch's ([B, ...]); row ``b`` belongs to ``chunk[b]``. Each video has its
    own generator seeded with ``seed``, so its music does not depend on what it is batched with."""
    hit_times = parse_times(hits, "--hits")
    check_hits(hit_times, pipe.spec.beat_condition)
    n_windows = 0
    for b, job in enumerate(chunk):
        row = [None if x is None else x[b: b + 1] for x in (tag_emb, tag_mask, neg_emb, neg_mask, beat)]
        job.codes, job.audio, n = generate_sections(
            pipe, job.video, job.num_frames, resolve_cuts(cuts, job.video, job.seconds),
            [t for t in hit_times if t < job.seconds], sampling, torch.Generator(device="cpu").manual_seed(seed),
            stride, *row[:4], beat=row[4])
        n_windows = max(n_windows, n)
    return n_windows
