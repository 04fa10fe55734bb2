"""MV-Align: the AV-Align score (Yariv et al. 2024) between a video and its music, as the paper uses it.

Definition, per clip:
1. audio peaks A: onset times of the music (``librosa.onset.onset_detect`` on the onset-strength envelope, mono at
   22.05 kHz, hop 512, librosa defaults: the reference's ``librosa.load`` + ``onset_detect``);
2. motion curve f[j]: mean optical-flow magnitude between frame j-1 and j (frame 0 repeats the first pair, so f has
   one value per frame), Farneback (OpenCV, parameters of the reference: pyr 0.5, 3 levels, win 15, 3 iters, poly 5,
   sigma 1.2) or RAFT (``vmas.alignment.video_motion``, optional);
3. video peaks V: strict local maxima f[j-1] < f[j] > f[j+1], at time j / fps;
4. a pair (a, v) matches when |a - v| < 1 / fps (strictly inside ±1 video frame, as the reference);
5. score = |M| / (|A| + |V| - |M|) (IoU), where M is a **one-to-one** maximum matching.

The AV-Align script (guyyariv/TempoTokens ``av_align.py``) is in :mod:`vmas.metrics.av_align`, one definition per
revision: the current one (2025-02: video peaks only at magnitude >= 0.1, each video peak used by at most one audio
peak, greedily in audio order; report key ``av_align_reference``) and the first (2023-10: every local maximum,
many-to-one; ``av_align_2023``). MV-Align differs from the current script only in that every local maximum is a
peak (no 0.1 threshold), in its resampler (scipy's polyphase filter, with which the README's SynthMV numbers were
measured, against the script's ``librosa.load``) and in matching by a sweep over sorted times; on sorted peaks with
one tolerance for all, the script's greedy loop and the sweep find matchings of the same (maximum) size. Points on
a line with a symmetric tolerance form an interval graph, where the greedy sweep is a maximum matching. A clip with
no peaks at all scores 0 (not NaN).

:func:`av_align_reference_iou` / :class:`MVAlign` with ``reference=True`` score peaks the current script's way
(``reference="2023-10"``: the first revision's), so callers that hold peaks or frames need not know the module.
"""
from __future__ import annotations

import typing as tp

import numpy as np

from vmas.alignment import FARNEBACK_PARAMS, onset_times  # noqa: F401 - FARNEBACK_PARAMS re-exported
from vmas.errors import ConfigError, DataError, VmasError
from vmas.metrics import av_align as script


def audio_peaks(wav: np.ndarray, sr: int, target_sr: int = 22050, hop_length: int = 512,
                resampler: str = "poly") -> np.ndarray:
    """Onset times (s) of a mono waveform, librosa defaults at 22.05 kHz (:func:`vmas.alignment.onset_times`).

    ``resampler="soxr_hq"`` reads the audio as the AV-Align reference's ``librosa.load`` does."""
    from vmas.metrics.embeddings import resample

    x = resample(np.asarray(wav, dtype=np.float32), sr, target_sr, method=resampler)
    return onset_times(x, target_sr, hop_length)


def farneback_motion(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] -> mean Farneback flow magnitude per frame float64 [T] (f[0] = f[1], as the
    reference).

    The AV-Align script's curve exactly (:func:`vmas.metrics.av_align.motion_from_frames`: ``cv2.mean``, a double);
    :func:`vmas.alignment.farneback_pair_motion` (training, [T-1]) is the same flow averaged in float32, within 1e-6."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise DataError(f"MV-Align: frames must be uint8 [T>=2, H, W, 3], got {frames.shape}")
    return script.motion_from_frames(frames)  # [T]


def motion_curve(frames: np.ndarray, flow: str = "farneback", **raft_kwargs) -> np.ndarray:
    """Per-frame motion [T]: ``farneback`` (default, the reference) or ``raft_small``/``raft_large``, optionally
    ``raft_small:<weights>`` (a torchvision weight name or a local .pth, see :func:`vmas.alignment.load_raft`)."""
    if flow == "farneback":
        return farneback_motion(frames)
    if flow.startswith("raft"):
        from vmas.alignment import video_motion

        flow, _, weights = flow.partition(":")
        if weights:
            raft_kwargs.setdefault("weights", weights)
        m = video_motion(frames, flow=flow, **raft_kwargs).double().cpu().numpy()  # [T-1]
        return np.concatenate([m[:1], m])
    raise ConfigError(f"MV-Align: unknown flow method '{flow}'; use farneback, raft_small or raft_large")


def video_peaks(motion: np.ndarray, fps: float, min_peak: float = 0.0) -> np.ndarray:
    """Times (s) of strict local maxima of the motion curve (end frames never count) of magnitude >= ``min_peak``
    (0.1 in the current AV-Align script; MV-Align keeps every maximum)."""
    return script.video_peak_times(motion, fps, min_peak)


def match_peaks(a: np.ndarray, v: np.ndarray, tol: float) -> int:
    """Size of a maximum one-to-one matching with |a_i - v_j| < tol (greedy sweep over sorted times)."""
    a, v = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(v, dtype=np.float64))
    i = j = matched = 0
    while i < len(a) and j < len(v):
        if abs(a[i] - v[j]) < tol:
            matched, i, j = matched + 1, i + 1, j + 1
        elif a[i] < v[j]:
            i += 1
        else:
            j += 1
    return matched


def av_align_iou(a: np.ndarray, v: np.ndarray, fps: float) -> float:
    """IoU of audio peaks ``a`` and video peaks ``v`` (seconds) matched within one video frame; 0 when both empty."""
    a, v = np.asarray(a), np.asarray(v)
    union_total = len(a) + len(v)
    if union_total == 0:
        return 0.0
    m = match_peaks(a, v, 1.0 / float(fps))
    return m / (union_total - m)


def reference_intersection(a: np.ndarray, v: np.ndarray, fps: float, revision: str = "2025-02") -> int:
    """The AV-Align script's intersection: for each audio peak in order, a video peak strictly within one frame;
    in the current revision each video peak is used once (greedy), in ``"2023-10"`` it may serve many."""
    return len(script.match(a, v, fps, script.get_revision(revision).one_to_one))


def av_align_reference_iou(a: np.ndarray, v: np.ndarray, fps: float) -> float:
    """The current script's score |I| / (|A| + |V| - |I|), greedy one-to-one; ``v`` already thresholded
    (:func:`video_peaks` with ``min_peak=0.1``). Both sets empty: 0 (the script divides by zero)."""
    return script.score_peaks(a, v, fps, script.CURRENT).score


def av_align_2023_iou(a: np.ndarray, v: np.ndarray, fps: float) -> float:
    """The 2023 script's score with its many-to-one intersection; may exceed 1. Both sets empty: 0."""
    return script.score_peaks(a, v, fps, script.ORIGINAL).score


class MVAlign:
    """Torchmetrics-style MV-Align: ``update(audio_peaks, video_peaks, fps)`` or ``update_media(wav, sr, frames,
    fps)``; ``compute()`` is the mean IoU over clips.

    Args:
        flow (str): see :func:`motion_curve`.
        reference (bool | str): score the AV-Align script's way instead, for comparison with papers that ran it:
            ``True`` or ``"2025-02"`` the current revision (0.1 threshold, greedy one-to-one), ``"2023-10"`` the
            first (many-to-one); audio peaks read as ``librosa.load`` reads them (soxr_hq). For files, prefer
            :class:`vmas.metrics.av_align.AVAlign`, which also reads the audio file with librosa.
    """

    def __init__(self, flow: str = "farneback", reference: tp.Union[bool, str] = False):
        self.flow = flow
        self.reference = reference
        self.revision = script.get_revision("2025-02" if reference is True else reference) if reference else None
        self.reset()

    def reset(self) -> None:
        self.scores: tp.Dict[str, float] = {}

    def update(self, a: np.ndarray, v: np.ndarray, fps: float, clip_id: tp.Optional[str] = None) -> float:
        score = script.score_peaks(a, v, fps, self.revision).score if self.revision else av_align_iou(a, v, fps)
        self.scores[clip_id if clip_id is not None else str(len(self.scores))] = score
        return score

    def update_media(self, wav: np.ndarray, sr: int, frames: np.ndarray, fps: float,
                     clip_id: tp.Optional[str] = None, motion: tp.Optional[np.ndarray] = None) -> float:
        """``motion`` [T]: a precomputed :func:`motion_curve` of ``frames`` (the flow is the costly part; the two
        scores of one clip share it)."""
        a = audio_peaks(wav, sr, resampler="soxr_hq" if self.revision else "poly")
        m = motion_curve(frames, self.flow) if motion is None else motion
        return self.update(a, video_peaks(m, fps, self.revision.min_peak if self.revision else 0.0), fps, clip_id)

    def compute(self) -> float:
        if not self.scores:
            raise VmasError("MV-Align: no clips were added")
        return float(np.mean(list(self.scores.values())))

    def meta(self) -> tp.Dict[str, tp.Any]:
        if self.revision:
            return {"clips": len(self.scores), **self.revision.describe(), "flow": self.flow}
        return {"clips": len(self.scores), "flow": self.flow, "tolerance": "±1 video frame (strict)",
                "matching": "one-to-one", "onsets": "librosa onset_detect @22.05 kHz hop 512"}


def read_video_frames(path: str, start: float = 0.0,
                      duration: tp.Optional[float] = None) -> tp.Tuple[np.ndarray, float]:
    """Frames of ``[start, start + duration)`` s of a video at its native rate (as the reference), uint8 RGB
    [T, H, W, 3], and its fps."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: cannot open video for MV-Align; check the manifest's video path")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 0.0
    if start > 0:
        cap.set(cv2.CAP_PROP_POS_MSEC, start * 1000.0)
    limit = int(round(float(duration) * fps)) if duration and fps > 0 else None
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    if len(frames) < 2 or fps <= 0:
        raise DataError(f"{path}: video has {len(frames)} readable frames at fps {fps}; MV-Align needs >= 2")
    return np.stack(frames), fps
