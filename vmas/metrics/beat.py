"""The beat metrics video-to-music papers report: BCS / BHS (+ CSD / HSD, F1), Beat Align Score, TBIoU / BIoU.

Which reference each one follows, and how it was checked (docs/metrics.md, tests/test_metrics_beat.py):

* **BCS / BHS** -- beat coverage and beat hit scores of D2M-GAN (Zhu et al., ECCV 2022), CDCD (Zhu et al.,
  ICLR 2023) and LORIS (Yu et al., ICML 2023). Only LORIS publishes code (OpenGVLab/LORIS ``beats_scores.py``,
  commit 68543bb, 2023-05-11); D2M-GAN's and CDCD's repositories have none. Per clip pair, in our words:

  1. both tracks read as ``librosa.load`` reads them (22.05 kHz mono); LORIS pins librosa 0.8.0, whose loader
     resampled with resampy ``kaiser_best`` and whose STFT padded by reflection (``legacy=True``, the default;
     ``legacy=False`` is today's librosa: soxr_hq and zero padding);
  2. onsets by ``onset_detect`` with LORIS's settings (in frames of hop 512: ``pre_max = post_max = pre_avg =
     post_avg = 3``, ``delta = 0.2``, ``wait = 1``), as times;
  3. each track becomes one bin per second (``ceil(duration)`` bins); a bin is a beat when an onset falls in it;
  4. the reference's bins are cut to the generated track's length; hits = bins that are beats in both;
  5. **BCS** = hits / generated beats, **BHS** = hits / reference beats (0 when the divisor is 0) -- LORIS's
     ``cover_rate`` and ``hit_rate`` exactly (note BCS divides by the *generated* beats: a precision);
  6. over clips: BCS, BHS = means; **CSD**, **HSD** = their standard deviations with ``ddof=1``; **F1** =
     2 BCS BHS / (BCS + BHS) of the means (LORIS prints all five).

  Where LORIS cannot run we differ: a generated track longer than the reference (its assert fails) is cut to the
  reference's length; an onset in the bin past the end (its IndexError) is dropped.

* **Beat Align Score** -- AIST++ / FACT (Li et al., ICCV 2021, ``mint/tools/calculate_beat_scores.py``) and
  Bailando (Siyao et al., CVPR 2022, ``utils/metrics_new.py``): mean over beats of ``exp(-d^2 / (2 sigma^2))``, d
  the distance to the nearest beat of the other stream. Bailando averages over **music** beats (``over="music"``,
  the default here), AIST++ over **motion** beats (``over="video"``). Both use sigma = 3 frames at 60 fps:
  ``sigma = 0.05`` s here. What counts as a beat, here: music beats = ``librosa.beat.beat_track`` (22.05 kHz, hop
  512, librosa defaults) of the music; video beats = the current AV-Align script's video peaks (Farneback motion
  maxima >= 0.1, :mod:`vmas.metrics.av_align`) -- the dance papers' kinematic beats need a skeleton a
  video-to-music clip does not have. No beats on the averaged side: 0 (AIST++ returns 0; Bailando divides by 0).

* **TBIoU / BIoU** -- VeM (2026): IoU of two sets of times matched within 0.5 s. TBIoU: the video's cut times
  (:func:`vmas.structure.detect_cuts`, what ``--cuts auto`` uses, or a given list) against the generated music's
  beats; BIoU: the generated music's beats against the reference music's. No code is published; the paper's
  definition is implemented: a one-to-one maximum matching with ``|a - b| <= 0.5`` (a sweep over sorted times,
  optimal for one tolerance), IoU = M / (|A| + |B| - M), 0 when both sets are empty. Checked on hand-computed cases.
"""
from __future__ import annotations

import dataclasses
import math
import typing as tp
from pathlib import Path

import numpy as np

from vmas.errors import DataError, VmasError

PathLike = tp.Union[str, Path]

LORIS_ONSET = dict(pre_max=3, post_max=3, pre_avg=3, post_avg=3, delta=0.2, wait=1)
"""``librosa.onset.onset_detect`` settings of LORIS's ``beats_scores.py`` (frames of hop 512 at 22.05 kHz)."""

BEAT_ALIGN_SIGMA = 0.05
"""Beat Align Score's sigma in seconds: AIST++ / Bailando's 3 frames at 60 fps."""

BEAT_IOU_TOLERANCE = 0.5
"""TBIoU / BIoU's matching window in seconds (VeM)."""


# ------------------------------------------------------------------------------------------------ loading
def load_22k(path: PathLike, legacy: bool = True, offset: float = 0.0,
             duration: tp.Optional[float] = None) -> np.ndarray:
    """Mono float32 [N] at 22.05 kHz as ``librosa.load`` reads it: librosa 0.8's resampler (resampy kaiser_best)
    when ``legacy``, today's (soxr_hq) otherwise. soundfile decodes; a container falls back to the PyAV reader."""
    from vmas.metrics.embeddings import load_audio, resample

    if not Path(path).is_file():
        raise DataError(f"{path}: audio file not found for the beat metrics; check the generated/reference paths")
    y, sr = load_audio(path)  # mono mean of the channels, float32, the file's rate
    a = int(round(float(offset) * sr))
    y = y[a: a + int(round(duration * sr))] if duration else y[a:]
    return resample(y, sr, 22050, "kaiser_best" if legacy else "soxr_hq")


# ------------------------------------------------------------------------------------------------ BCS / BHS
def loris_onsets(y: np.ndarray, sr: int = 22050, legacy: bool = True) -> np.ndarray:
    """Onset times (s) with LORIS's peak-picking settings. ``legacy`` pads the STFT by reflection, as librosa 0.8
    (which LORIS pins) did; librosa >= 0.10 pads with zeros."""
    import librosa

    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if y.size == 0 or not np.any(y):
        return np.zeros(0)
    env = librosa.onset.onset_strength(y=y, sr=sr, pad_mode="reflect" if legacy else "constant")
    return np.asarray(librosa.onset.onset_detect(onset_envelope=env, sr=sr, units="time", **LORIS_ONSET),
                      dtype=np.float64)


def beat_bins(onsets: tp.Sequence[float], duration_s: float, rate: float = 1.0) -> np.ndarray:
    """bool [ceil(duration * rate)]: bin k is a beat when an onset lies in [k / rate, (k + 1) / rate)."""
    n = int(math.ceil(duration_s * rate))
    bins = np.zeros(n, dtype=bool)
    for t in onsets:
        k = int(np.trunc(t * rate))
        if 0 <= k < n:  # an onset past the last bin (LORIS: IndexError) is dropped
            bins[k] = True
    return bins


@dataclasses.dataclass
class BeatCounts:
    """One clip pair's bins: ``reference`` beats, ``generated`` beats, ``hits`` (beats in both), and the scores."""

    reference: int
    generated: int
    hits: int

    @property
    def coverage(self) -> float:
        """LORIS's ``cover_rate``: hits / generated beats."""
        return self.hits / self.generated if self.generated else 0.0

    @property
    def hit(self) -> float:
        """LORIS's ``hit_rate``: hits / reference beats."""
        return self.hits / self.reference if self.reference else 0.0


def beat_counts(ref_bins: np.ndarray, gen_bins: np.ndarray) -> BeatCounts:
    """Compare per-second beat bins; the reference is cut to the generated length (and vice versa, see module)."""
    n = min(len(ref_bins), len(gen_bins))
    r, g = np.asarray(ref_bins[:n], dtype=bool), np.asarray(gen_bins[:n], dtype=bool)
    return BeatCounts(int(r.sum()), int(g.sum()), int((r & g).sum()))


class BeatCoverageHit:
    """BCS / BHS over clip pairs (LORIS's numbers): ``update_audio(id, ref, gen)`` with 22.05 kHz waveforms or
    ``update_files``; ``compute()`` -> ``{"bcs", "bhs", "csd", "hsd", "f1"}``.

    Args:
        legacy: librosa 0.8's loader and STFT padding (LORIS's pinned version) -- the default; False: today's.
        rate: bins per second (LORIS: 1; some later papers use 5).
    """

    def __init__(self, legacy: bool = True, rate: float = 1.0):
        self.legacy, self.rate = legacy, rate
        self.reset()

    def reset(self) -> None:
        self.clips: tp.Dict[str, BeatCounts] = {}

    def update_audio(self, clip_id: str, ref: np.ndarray, gen: np.ndarray, sr: int = 22050) -> BeatCounts:
        """Mono waveforms already at 22.05 kHz (as :func:`load_22k` reads them)."""
        if sr != 22050:
            raise VmasError("BCS/BHS: pass 22.05 kHz waveforms (vmas.metrics.beat.load_22k reads them so)")
        rb = beat_bins(loris_onsets(ref, sr, self.legacy), len(ref) / sr, self.rate)
        gb = beat_bins(loris_onsets(gen, sr, self.legacy), len(gen) / sr, self.rate)
        self.clips[clip_id] = counts = beat_counts(rb, gb)
        return counts

    def update_files(self, clip_id: str, ref: PathLike, gen: PathLike,
                     ref_span: tp.Optional[tp.Tuple[float, tp.Optional[float]]] = None) -> BeatCounts:
        r = load_22k(ref, self.legacy, *(ref_span or (0.0, None)))
        return self.update_audio(clip_id, r, load_22k(gen, self.legacy))

    def per_clip(self) -> tp.Dict[str, tp.Dict[str, float]]:
        return {k: {"bcs": c.coverage, "bhs": c.hit} for k, c in self.clips.items()}

    def compute(self) -> tp.Dict[str, float]:
        if not self.clips:
            raise VmasError("BCS/BHS: no clip pairs were added")
        cover = np.array([c.coverage for c in self.clips.values()])
        hit = np.array([c.hit for c in self.clips.values()])
        bcs, bhs = float(cover.mean()), float(hit.mean())
        sd = (lambda x: float(np.std(x, ddof=1))) if len(cover) > 1 else (lambda x: float("nan"))
        return {"bcs": bcs, "bhs": bhs, "csd": sd(cover), "hsd": sd(hit),
                "f1": 2 * bcs * bhs / (bcs + bhs) if bcs + bhs else 0.0}

    def meta(self) -> tp.Dict[str, tp.Any]:
        return {"clips": len(self.clips), "reference": "OpenGVLab/LORIS beats_scores.py (68543bb)",
                "onsets": dict(LORIS_ONSET, hop=512, sr=22050), "bins_per_second": self.rate,
                "loader": "librosa 0.8 (resampy kaiser_best, reflect padding)" if self.legacy
                else "librosa >= 0.10 (soxr_hq, zero padding)"}


# ------------------------------------------------------------------------------------------------ Beat Align
def music_beats(y: np.ndarray, sr: int = 22050) -> np.ndarray:
    """Beat times (s) of mono ``y``: ``librosa.beat.beat_track`` with librosa's defaults (hop 512)."""
    import librosa

    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if y.size == 0 or not np.any(y):
        return np.zeros(0)
    _, beats = librosa.beat.beat_track(y=y, sr=sr, units="time")
    return np.asarray(beats, dtype=np.float64)


def beat_align_score(music: tp.Sequence[float], video: tp.Sequence[float], sigma: float = BEAT_ALIGN_SIGMA,
                     over: str = "music") -> float:
    """Mean over the ``over`` side's beats of exp(-d^2 / (2 sigma^2)), d = distance (s) to the nearest beat of the
    other side. ``over="music"``: Bailando; ``"video"``: AIST++. 0 when either side has no beats."""
    if over not in ("music", "video"):
        raise VmasError(f"Beat Align Score: over must be 'music' (Bailando) or 'video' (AIST++), got '{over}'")
    m, v = np.asarray(music, dtype=np.float64), np.asarray(video, dtype=np.float64)
    base, other = (m, v) if over == "music" else (v, m)
    if base.size == 0 or other.size == 0:
        return 0.0
    d = np.abs(base[:, None] - other[None, :]).min(axis=1)  # [len(base)]
    return float(np.mean(np.exp(-d ** 2 / (2 * sigma ** 2))))


# ------------------------------------------------------------------------------------------------ TBIoU / BIoU
def match_within(a: tp.Sequence[float], b: tp.Sequence[float], tol: float = BEAT_IOU_TOLERANCE
                 ) -> tp.List[tp.Tuple[int, int]]:
    """A maximum one-to-one matching of times with |a_i - b_j| <= tol, as (i, j) pairs (indices of the inputs).

    The two-pointer sweep over sorted times is optimal: with one tolerance for all points the compatibility graph is
    an interval (unit-interval) graph, where matching each earliest point to its earliest free partner in range
    never blocks a larger matching."""
    ia, ib = np.argsort(np.asarray(a, dtype=np.float64), kind="stable"), np.argsort(np.asarray(b, dtype=np.float64),
                                                                                    kind="stable")
    sa, sb = np.asarray(a, dtype=np.float64)[ia], np.asarray(b, dtype=np.float64)[ib]
    i = j = 0
    pairs = []
    while i < len(sa) and j < len(sb):
        if abs(sa[i] - sb[j]) <= tol:
            pairs.append((int(ia[i]), int(ib[j])))
            i, j = i + 1, j + 1
        elif sa[i] < sb[j]:
            i += 1
        else:
            j += 1
    return pairs


def beat_iou(a: tp.Sequence[float], b: tp.Sequence[float], tol: float = BEAT_IOU_TOLERANCE) -> float:
    """|M| / (|A| + |B| - |M|) with M from :func:`match_within`; 0 when both are empty."""
    m = len(match_within(a, b, tol))
    denom = len(a) + len(b) - m
    return m / denom if denom else 0.0


def tbiou(cut_times: tp.Sequence[float], generated_beats: tp.Sequence[float],
          tol: float = BEAT_IOU_TOLERANCE) -> float:
    """TBIoU: the video's cut (transition) times against the generated music's beats."""
    return beat_iou(cut_times, generated_beats, tol)


def biou(generated_beats: tp.Sequence[float], reference_beats: tp.Sequence[float],
         tol: float = BEAT_IOU_TOLERANCE) -> float:
    """BIoU: the generated music's beats against the reference music's."""
    return beat_iou(generated_beats, reference_beats, tol)


def video_cuts(video: PathLike, seconds: tp.Optional[float] = None,
               cuts: tp.Union[str, tp.Sequence[float], None] = "auto") -> tp.List[float]:
    """Cut times (s) of a video: ``"auto"`` runs the ``--cuts auto`` detector (:func:`vmas.structure.detect_cuts`),
    a list / "T1,T2" string is taken as given (:func:`vmas.structure.resolve_cuts`)."""
    from vmas import structure

    if isinstance(cuts, str) and cuts.strip().lower() == "auto":
        return [float(t) for t in structure.detect_cuts(video, seconds)]
    return [float(t) for t in structure.parse_times(cuts, "--cuts")] if cuts is not None else []


class BeatMetrics:
    """Beat Align Score, TBIoU and BIoU per clip; ``compute()`` -> means over clips.

    ``update(clip_id, gen_beats, video_beats, cut_times, ref_beats=None)`` takes times in seconds (the
    evaluation computes them once per clip: :func:`music_beats`, the AV-Align video peaks, :func:`video_cuts`).
    BIoU needs the reference's beats and covers only clips that have them."""

    def __init__(self, sigma: float = BEAT_ALIGN_SIGMA, over: str = "music", tol: float = BEAT_IOU_TOLERANCE):
        self.sigma, self.over, self.tol = sigma, over, tol
        self.reset()

    def reset(self) -> None:
        self.scores: tp.Dict[str, tp.Dict[str, float]] = {"beat_align": {}, "tbiou": {}, "biou": {}}

    def update(self, clip_id: str, gen_beats: tp.Sequence[float], video_beats: tp.Sequence[float],
               cut_times: tp.Sequence[float], ref_beats: tp.Optional[tp.Sequence[float]] = None) -> None:
        self.scores["beat_align"][clip_id] = beat_align_score(gen_beats, video_beats, self.sigma, self.over)
        self.scores["tbiou"][clip_id] = tbiou(cut_times, gen_beats, self.tol)
        if ref_beats is not None:
            self.scores["biou"][clip_id] = biou(gen_beats, ref_beats, self.tol)

    def compute(self) -> tp.Dict[str, float]:
        return {k: float(np.mean(list(v.values()))) for k, v in self.scores.items() if v}

    def meta(self) -> tp.Dict[str, tp.Any]:
        return {"clips": {k: len(v) for k, v in self.scores.items()},
                "beat_align": {"sigma_s": self.sigma, "over": self.over,
                               "music_beats": "librosa.beat.beat_track (22.05 kHz, hop 512)",
                               "video_beats": "AV-Align 2025-02 video peaks (Farneback maxima >= 0.1)"},
                "tbiou": {"tolerance_s": self.tol, "cuts": "vmas.structure.detect_cuts (--cuts auto)"},
                "biou": {"tolerance_s": self.tol}}
