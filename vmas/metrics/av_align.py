"""AV-Align (Yariv et al.) exactly as the public script computes it, one definition per revision of the script.

The script is ``av_align.py`` of guyyariv/TempoTokens. Papers cite "AV-Align" without saying which revision they
ran, and the two revisions give different numbers on the same files, so each has its own report key:

- ``av_align_reference``: revision of 2025-02-13 (commit bf0b1e3, "Update av_align.py"), the one anyone who ran
  the script since then got. A video peak is a strict local maximum of the motion curve whose magnitude is
  >= 0.1; each video peak serves at most one audio peak, taken greedily in audio order (for each audio peak, the
  first still-unused video peak in range, in video order).
- ``av_align_2023``: revision of 2023-10-26 (commit 34d9502, "TempoTokens code"), for papers that ran it before.
  Every strict local maximum is a video peak; an audio peak counts when any video peak is in range, so one video
  peak may serve many audio peaks (two onsets at one motion peak give 2 / (2 + 1 - 2) = 2).

Steps shared by both, in our words (the script was read, not copied):

1. frames: every frame OpenCV's ``VideoCapture`` decodes from the file, at the fps OpenCV reports
   (``CAP_PROP_FPS``), converted to grayscale with OpenCV;
2. motion: for each consecutive pair the Farneback flow (pyramid 0.5, 3 levels, window 15, 3 iterations, poly 5,
   sigma 1.2, flags 0) and ``cv2.mean`` of its magnitude (a double); the first pair is counted twice, so the curve
   has one value per frame;
3. video peaks at ``i / fps`` for each interior index ``i`` that passes the revision's rule above;
4. audio peaks: ``librosa.load(path)`` (mono mean, soxr_hq resampling to 22.05 kHz), ``onset_strength`` with
   librosa's defaults, ``onset_detect`` on that envelope, ``frames_to_time`` (hop 512);
5. an audio peak ``a`` is in range of a video peak ``v`` when ``v - 1/fps < a < v + 1/fps`` (evaluated in that
   order, in double precision, as the script does);
6. clip score = intersection / (|A| + |V| - intersection); the set score is the mean over clips.

Where we differ, only where the script cannot run: both sets empty divides by zero in the script and scores 0 here;
the 2023 revision loops to an undefined ``n`` (``len(arr)`` is what it means and what the 2025 one uses).

``tests/test_av_align_parity.py`` holds the numbers the fetched script printed on real footage and real music, and
this module reproduces them to 1e-9 per clip.
"""
from __future__ import annotations

import dataclasses
import typing as tp
from pathlib import Path

import numpy as np

from vmas.errors import DataError, VmasError

PathLike = tp.Union[str, Path]


@dataclasses.dataclass(frozen=True)
class AVAlignRevision:
    """One revision of the public AV-Align script: what it counts as a video peak and how it intersects.

    Attributes:
        key: the report key (``report.json``) of scores computed this way.
        commit: guyyariv/TempoTokens commit of ``av_align.py``.
        date: that commit's date (what papers' dates are compared with).
        min_peak: a motion local maximum below this magnitude is not a video peak (0: every maximum counts,
            flow magnitudes being non-negative).
        one_to_one: each video peak serves at most one audio peak (greedy in audio order); else many-to-one.
    """

    key: str
    commit: str
    date: str
    min_peak: float
    one_to_one: bool

    def describe(self) -> tp.Dict[str, tp.Any]:
        return {"script": "guyyariv/TempoTokens av_align.py", "commit": self.commit, "date": self.date,
                "min_peak": self.min_peak,
                "matching": "one-to-one, greedy in audio order" if self.one_to_one else "many-to-one",
                "tolerance": "strictly within ±1 video frame",
                "frames": "OpenCV VideoCapture, every frame, CAP_PROP_FPS",
                "onsets": "librosa.load (soxr_hq, 22.05 kHz) + onset_detect, hop 512"}


CURRENT = AVAlignRevision("av_align_reference", "bf0b1e30a8f6cd6e0cb53850ce80afa639f2f848", "2025-02-13",
                          min_peak=0.1, one_to_one=True)
ORIGINAL = AVAlignRevision("av_align_2023", "34d9502579712a37d04c7a526274f81e4f2d3006", "2023-10-26",
                           min_peak=0.0, one_to_one=False)
REVISIONS: tp.Dict[str, AVAlignRevision] = {"2025-02": CURRENT, "2023-10": ORIGINAL}


def get_revision(revision: tp.Union[str, AVAlignRevision]) -> AVAlignRevision:
    """A revision by its name (``2025-02``, ``2023-10``), its report key, or itself."""
    if isinstance(revision, AVAlignRevision):
        return revision
    for name, rev in REVISIONS.items():
        if revision in (name, rev.key):
            return rev
    raise VmasError(f"AV-Align: unknown revision '{revision}'; use one of {', '.join(REVISIONS)}")


# ------------------------------------------------------------------------------------------------ video side
def _pair_motion(gray_a: np.ndarray, gray_b: np.ndarray) -> float:
    """``cv2.mean`` of the Farneback flow magnitude between two uint8 gray frames [H, W] (a double, as the script)."""
    import cv2

    from vmas.alignment import FARNEBACK_PARAMS

    flow = cv2.calcOpticalFlowFarneback(gray_a, gray_b, None, **FARNEBACK_PARAMS)  # [H, W, 2] float32
    return float(cv2.mean(cv2.magnitude(flow[..., 0], flow[..., 1]))[0])


def motion_from_gray(gray: tp.Sequence[np.ndarray]) -> np.ndarray:
    """uint8 gray frames [T][H, W] -> float64 motion [T]: pair (j-1, j) at j, the first pair also at 0."""
    if len(gray) < 2:
        raise DataError(f"AV-Align: need at least 2 frames, got {len(gray)}")
    pairs = [_pair_motion(a, b) for a, b in zip(gray[:-1], gray[1:])]  # [T-1]
    return np.asarray(pairs[:1] + pairs, dtype=np.float64)


def motion_from_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] (decord layout) -> float64 motion [T].

    OpenCV's RGB->gray on RGB equals its BGR->gray on the BGR frame the script reads (the same fixed-point BT.601
    weights on the same channels), so frames read by :func:`vmas.metrics.mv_align.read_video_frames` give the
    script's curve bit for bit."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(f"AV-Align: frames must be uint8 [T, H, W, 3], got {frames.shape}")
    return motion_from_gray([cv2.cvtColor(np.ascontiguousarray(f, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
                             for f in frames])


def read_motion(path: PathLike) -> tp.Tuple[np.ndarray, float]:
    """Motion curve float64 [T] and fps of a video file, read as the script reads it: every frame OpenCV decodes,
    the fps OpenCV reports. Frames are converted to gray as they are decoded (memory: one gray frame each)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: OpenCV cannot open this video for AV-Align; check the path or re-encode it")
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    gray = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        gray.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    cap.release()
    if len(gray) < 2 or not fps > 0:
        raise DataError(f"{path}: {len(gray)} decodable frames at fps {fps}; AV-Align needs >= 2 and a frame rate")
    return motion_from_gray(gray), fps


def peak_indices(motion: np.ndarray, min_peak: float = 0.0) -> np.ndarray:
    """Interior indices i with motion[i-1] < motion[i] > motion[i+1] and motion[i] >= min_peak -> int [P]."""
    m = np.asarray(motion, dtype=np.float64)
    if m.size < 3:
        return np.zeros(0, dtype=np.int64)
    mid = m[1:-1]
    return np.nonzero((m[:-2] < mid) & (mid > m[2:]) & (mid >= min_peak))[0] + 1


def video_peak_times(motion: np.ndarray, fps: float, min_peak: float = 0.0) -> np.ndarray:
    """Video peaks in seconds, ``i / fps`` (IEEE division, as the script's ``i / fps``) -> float64 [P]."""
    return peak_indices(motion, min_peak).astype(np.float64) / float(fps)


# ------------------------------------------------------------------------------------------------ audio side
def onsets_from_envelope(y: np.ndarray, sr: int) -> np.ndarray:
    """Onset times (s) of mono float32 ``y`` [N] already at ``sr``: onset_strength, onset_detect on that envelope,
    frames_to_time (librosa defaults: hop 512), the script's three calls."""
    import librosa

    y = np.asarray(y, dtype=np.float32).reshape(-1)
    env = librosa.onset.onset_strength(y=y, sr=sr)
    frames = librosa.onset.onset_detect(onset_envelope=env, sr=sr)
    return np.asarray(librosa.frames_to_time(frames, sr=sr), dtype=np.float64)


def read_onsets(path: PathLike, offset: float = 0.0, duration: tp.Optional[float] = None) -> np.ndarray:
    """Audio peaks (s) of a file, read as the script reads it: ``librosa.load(path)`` (22.05 kHz, mono, soxr_hq).

    ``offset``/``duration`` select a span of a longer file (the script always reads the whole file). A file
    soundfile cannot decode (mp4, mkv) is decoded by the project's PyAV reader (32 kHz mono) and then resampled
    as ``librosa.load`` resamples (librosa's own container fallback, audioread, is deprecated and often absent)."""
    import soundfile as sf

    if not Path(path).is_file():
        raise DataError(f"{path}: audio file not found for AV-Align; check the generated/reference paths")
    try:
        sf.info(str(path))
    except Exception:  # noqa: BLE001 - not a soundfile format: a container
        from vmas.metrics.embeddings import load_audio

        y, sr = load_audio(path)  # mono float32 [N] at 32 kHz
        a = int(round(float(offset) * sr))
        y = y[a: a + int(round(duration * sr))] if duration else y[a:]
        return onsets_from_array(y, sr)
    import librosa

    y, sr = librosa.load(str(path), offset=float(offset), duration=duration)
    return onsets_from_envelope(y, sr)


def onsets_from_array(wav: np.ndarray, sr: int) -> np.ndarray:
    """Audio peaks of a mono waveform given as an array: what ``librosa.load`` does after decoding (soxr_hq to
    22.05 kHz), then :func:`onsets_from_envelope`. Equal to :func:`read_onsets` when ``wav`` is the file's own
    float32 samples averaged over channels."""
    from vmas.metrics.embeddings import resample

    return onsets_from_envelope(resample(np.asarray(wav, dtype=np.float32), int(sr), 22050, "soxr_hq"), 22050)


# ------------------------------------------------------------------------------------------------ scoring
def match(audio_peaks: tp.Sequence[float], video_peaks: tp.Sequence[float], fps: float,
          one_to_one: bool = True) -> tp.List[tp.Tuple[int, int]]:
    """The script's intersection as (audio index, video index) pairs, one per counted audio peak.

    For each audio peak in the given order, the first video peak (in the given order) with
    ``v - 1/fps < a < v + 1/fps`` that is still free (``one_to_one``) or any such peak (many-to-one)."""
    tol = 1 / float(fps)
    a = [float(x) for x in audio_peaks]
    v = [float(x) for x in video_peaks]
    used = [False] * len(v)
    pairs = []
    for i, ap in enumerate(a):
        for j, vp in enumerate(v):
            if (not (one_to_one and used[j])) and vp - tol < ap < vp + tol:
                pairs.append((i, j))
                used[j] = True
                break
    return pairs


def iou(n_audio: int, n_video: int, inter: int) -> float:
    """inter / (|A| + |V| - inter); 0 when both sets are empty (the script divides by zero there)."""
    denom = n_audio + n_video - inter
    return inter / denom if denom else 0.0


@dataclasses.dataclass
class AVAlignClip:
    """One clip's score and what it counted (the report draws these).

    Attributes:
        score: the clip's IoU.
        fps: the video's frame rate (the tolerance is one frame).
        audio_peaks: onset times (s) [A].
        video_peaks: video peak times (s) [V].
        pairs: (audio index, video index) of each counted audio peak.
        motion: the motion curve [T] (None when only peaks were given).
    """

    score: float
    fps: float
    audio_peaks: np.ndarray
    video_peaks: np.ndarray
    pairs: tp.List[tp.Tuple[int, int]]
    motion: tp.Optional[np.ndarray] = None


def score_peaks(audio_peaks: tp.Sequence[float], video_peaks: tp.Sequence[float], fps: float,
                revision: tp.Union[str, AVAlignRevision] = CURRENT) -> AVAlignClip:
    """Score peaks already picked (the revision's threshold is applied by whoever picked the video peaks)."""
    rev = get_revision(revision)
    pairs = match(audio_peaks, video_peaks, fps, rev.one_to_one)
    return AVAlignClip(iou(len(audio_peaks), len(video_peaks), len(pairs)), float(fps),
                       np.asarray(audio_peaks, dtype=np.float64), np.asarray(video_peaks, dtype=np.float64), pairs)


def score_motion(audio_peaks: tp.Sequence[float], motion: np.ndarray, fps: float,
                 revision: tp.Union[str, AVAlignRevision] = CURRENT) -> AVAlignClip:
    """Score onsets against a motion curve [T]: the revision picks the video peaks, then :func:`score_peaks`."""
    rev = get_revision(revision)
    clip = score_peaks(audio_peaks, video_peak_times(motion, fps, rev.min_peak), fps, rev)
    clip.motion = np.asarray(motion, dtype=np.float64)
    return clip


def av_align_files(video: PathLike, audio: PathLike,
                   revision: tp.Union[str, AVAlignRevision] = CURRENT) -> AVAlignClip:
    """The script's per-file score: ``video`` read with OpenCV, ``audio`` with ``librosa.load``."""
    motion, fps = read_motion(video)
    return score_motion(read_onsets(audio), motion, fps, revision)


class AVAlign:
    """Torchmetrics-style AV-Align of one script revision; ``compute()`` is the mean over clips (the script's).

    Feed it files (``update_files``: exactly the script), a motion curve with an audio file or waveform
    (``update_motion``: the evaluation reads each video once for several scores), or peaks (``update``).

    Args:
        revision: ``"2025-02"`` (the current script, report key ``av_align_reference``) or ``"2023-10"``
            (``av_align_2023``), or an :class:`AVAlignRevision`.
    """

    def __init__(self, revision: tp.Union[str, AVAlignRevision] = CURRENT):
        self.revision = get_revision(revision)
        self.reset()

    def reset(self) -> None:
        self.clips: tp.Dict[str, AVAlignClip] = {}

    @property
    def scores(self) -> tp.Dict[str, float]:
        return {k: c.score for k, c in self.clips.items()}

    def _add(self, clip: AVAlignClip, clip_id: tp.Optional[str]) -> float:
        self.clips[clip_id if clip_id is not None else str(len(self.clips))] = clip
        return clip.score

    def update(self, audio_peaks: tp.Sequence[float], video_peaks: tp.Sequence[float], fps: float,
               clip_id: tp.Optional[str] = None) -> float:
        return self._add(score_peaks(audio_peaks, video_peaks, fps, self.revision), clip_id)

    def update_motion(self, motion: np.ndarray, fps: float, audio: tp.Union[PathLike, np.ndarray],
                      sr: tp.Optional[int] = None, clip_id: tp.Optional[str] = None,
                      span: tp.Optional[tp.Tuple[float, tp.Optional[float]]] = None) -> float:
        """``motion`` [T] from :func:`read_motion` or :func:`motion_from_frames`; ``audio`` a file (read with
        ``librosa.load``, ``span`` = (offset, duration) of a longer file) or a mono waveform at ``sr``."""
        if isinstance(audio, np.ndarray):
            if sr is None:
                raise VmasError("AVAlign.update_motion: a waveform needs its sample rate (sr=...)")
            a = onsets_from_array(audio, sr)
        else:
            a = read_onsets(audio, *(span or (0.0, None)))
        return self._add(score_motion(a, motion, fps, self.revision), clip_id)

    def update_files(self, video: PathLike, audio: PathLike, clip_id: tp.Optional[str] = None) -> float:
        return self._add(av_align_files(video, audio, self.revision), clip_id)

    def compute(self) -> float:
        if not self.clips:
            raise VmasError(f"AV-Align ({self.revision.key}): no clips were added")
        return float(np.mean([c.score for c in self.clips.values()]))

    def meta(self) -> tp.Dict[str, tp.Any]:
        return {"clips": len(self.clips), "flow": "farneback", **self.revision.describe()}
