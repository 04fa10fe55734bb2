"""Video and audio I/O used by training, evaluation and inference alike.

One reader behind each function:

- frames: **decord** (random access by frame index, per-frame timestamps, fast). PyAV opens the file first for a
  cheap header check so that a missing/non-media/no-video file gets a clear :class:`MediaError` before decord ever
  sees it (decord's own errors are multi-line C++ traces). PyAV is also the fallback decoder when decord's
  ``get_batch`` fails: decord 0.6 mis-sizes its output buffer for some frame sizes (48x96 and 72x128 portrait
  fail, tested); the fallback finds the same frames by timestamp.
- audio, probing and muxing: **PyAV** (decord cannot write files, and its audio reader cannot resample to an
  exact rate or report a missing stream cleanly).

Timing conventions (DEVELOPERS.md): a window of ``duration`` seconds at ``fps`` has ``T = round(duration * fps)``
frames; frame ``j`` targets source time ``start + j / fps`` and we take the source frame whose real timestamp
(per-frame pts, so variable frame rate is exact) is nearest to it. Past the end of the video the nearest frame
is the last one, which is how a short video is padded; its real duration is reported in :class:`VideoInfo`.
"""
from __future__ import annotations

import heapq
import logging
import math
import re
import typing as tp
import wave
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vmas.errors import MediaError
from vmas.mixing import downmix_weights

PathLike = tp.Union[str, Path]
log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VideoInfo:
    """What :func:`probe_video` learns about a file. Times in seconds."""

    path: Path
    duration: float
    """Real duration of the video stream: last frame's timestamp + one frame interval (exact for CFR)."""
    fps: float
    """Average frame rate, ``num_frames / duration`` (for VFR files this is an average, not a grid)."""
    width: int
    height: int
    """Displayed size: a phone video stored 1920x1080 with a 90 degree display rotation reports 1080x1920."""
    num_frames: int
    has_audio: bool


# --------------------------------------------------------------------------------------------------- probing
def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise MediaError(f"{path}: is not a file; pass a video or audio file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty (0 bytes); re-export or re-download it")


def _open_av(path: Path):
    """Open with PyAV, turning its errors into a one-line MediaError."""
    import av

    _check_file(path)
    try:
        return av.open(str(path), metadata_errors="ignore")
    except Exception as err:  # av.error.InvalidDataError and friends
        raise MediaError(f"{path}: not a readable media file ({_short(err)}); "
                         "check the file is a complete video/audio file") from None


def _short(err: BaseException) -> str:
    """First line of an exception message, trimmed: decord/av messages can be long C++ traces."""
    strerror = getattr(err, "strerror", None)  # PyAV's errors: the reason alone, without "[Errno N]" and the path
    text = (strerror if isinstance(strerror, str) and strerror else str(err)).strip().splitlines()
    line = text[0] if text else type(err).__name__
    line = re.sub(r"^\[[\d:]+\] \S+:\d+: (Error: )?", "", line)  # decord's "[time] file.cc:line: " prefix
    return line[:160]


def _header(path: Path) -> tp.Tuple[int, int, bool, int]:
    """(displayed width, displayed height, has_audio, rotation in degrees counterclockwise) from the container;
    raises when there is no video stream or it holds no frames."""
    with _open_av(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream; pass a video file (audio-only files have no frames)")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        has_audio = len(container.streams.audio) > 0
        width, height = int(ctx.width), int(ctx.height)
        has_packet, rotation = _first_frame(container, stream)
        if not has_packet:
            raise MediaError(f"{path}: video stream has zero frames; pass a video with at least one frame")
    if width <= 0 or height <= 0:
        raise MediaError(f"{path}: video stream has no frame size (corrupt header); re-encode the file")
    if rotation % 180:  # phone videos: stored landscape, shown portrait
        width, height = height, width
    return width, height, has_audio, rotation


def _first_frame(container, stream) -> tp.Tuple[bool, int]:
    """(the stream holds a non-empty packet, display rotation of its first frame in degrees counterclockwise,
    multiple of 90). Reads only the first few packets."""
    has_packet = False
    try:
        for i, pkt in enumerate(container.demux(stream)):
            if pkt.size <= 0:
                continue
            has_packet = True
            for frame in pkt.decode():
                return True, int(round(getattr(frame, "rotation", 0) / 90.0)) * 90 % 360
            if i >= 16:
                break
    except Exception:  # a corrupt body: let the decoder report it with its own reason
        return True, 0
    return has_packet, 0


def _decord_reader(path: Path):
    import decord

    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord.DECORDError, RuntimeError
        raise MediaError(f"{path}: cannot decode the video stream ({_short(err)}); the file may be truncated "
                         "or corrupt, re-encode it") from None
    if len(vr) == 0:
        raise MediaError(f"{path}: video stream has zero frames; pass a video with at least one frame")
    return vr


def _decord_times(vr) -> tp.Optional[np.ndarray]:
    """decord's per-frame presentation times in seconds, float64 [N]; None when it cannot give them."""
    try:
        return np.asarray(vr.get_frame_timestamp(np.arange(len(vr))), dtype=np.float64)[:, 0]  # [N]
    except Exception:
        return None


@dataclass
class _Span:
    """What a demux-only pass over the video packets says about the stream's timing (no decoding)."""

    times: np.ndarray
    """Presentation times of the non-empty packets, sorted, seconds after the first one, float64 [P]."""
    duration: float
    """Last presentation time - first + the median frame interval: the stream's duration as players see it. An
    AVI's is its header's (every index entry, dropped-frame entries included: the last real frame shows until the
    stream ends), so a sparse or variable-rate AVI keeps its length."""
    codec: str
    format: str
    """Container format names as FFmpeg reports them (e.g. ``avi``, ``mov,mp4,m4a,3gp,3g2,mj2``)."""


def _packet_span(path: Path) -> _Span:
    """Timing of the video stream from its packets' pts (dts where a packet has none).

    This is the container's own account, which is what a muxed copy of the stream will last; decord's per-frame
    times are wrong for some files (an AVI holding B-frames: the first frames come back with times of -3.7e17 s).
    """
    with _open_av(path) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        codec, fmt = stream.codec_context.name, container.format.name
        pts: tp.List[int] = []
        try:
            for pkt in container.demux(stream):
                if pkt.size <= 0:
                    continue
                t = pkt.pts if pkt.pts is not None else pkt.dts
                if t is not None:
                    pts.append(t)
        except Exception:  # a truncated tail: the packets before it still count
            pass
        header = float(stream.duration * tb) if stream.duration and tb else 0.0
        start = stream.start_time
    if not pts or not tb:
        return _Span(times=np.zeros(1), duration=header or 1.0 / 25.0, codec=codec, format=fmt)
    t = np.unique(np.asarray(pts, np.int64))  # [P] sorted; AVI B-frame streams repeat none, MPEG-TS may
    times = (t - t[0]).astype(np.float64) * float(tb)
    dt = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    if dt <= 0:  # a single frame: the header's duration, else a 1/25 s still (the least surprising answer)
        dt = header if 0 < header < 10 else 1.0 / 25.0
    duration = float(times[-1] + dt)
    if fmt == "avi" and header:
        # an AVI's header counts every index entry, dropped-frame entries (no data: the previous frame stays on
        # screen) included: its end is the stream's end, also when the last entries are dropped frames
        end = header - (float((t[0] - (start or 0)) * tb) if start is not None else 0.0)
        if end > times[-1]:
            duration = end
    return _Span(times=times, duration=duration, codec=codec, format=fmt)


def _times_agree(a: tp.Optional[np.ndarray], b: np.ndarray) -> bool:
    """decord's frame times ``a`` [N] describe the same frames as the packets' ``b`` [P]: same count, increasing,
    within half a frame interval of each other once both start at their first frame."""
    if a is None or len(a) != len(b) or not np.all(np.isfinite(a)):
        return False
    if len(a) == 1:
        return abs(a[0]) < 1.0
    if np.any(np.diff(a) <= 0):
        return False
    tol = 0.5 * float(np.median(np.diff(b)))
    return abs(a[0]) <= tol + 1e-6 and bool(np.max(np.abs((a - a[0]) - b)) <= tol + 1e-6)


class _Source:
    """An opened video: header, frame times, duration, and the decoder that returns its frames.

    Two ways to get frames: decord by frame index (random access, the normal case), or, when decord's times do
    not agree with the container's (AVI with B-frames), a sequential PyAV decoder that counts frames as they come
    out (a decoder emits frames in display order, so the k-th frame out is frame k whatever the timestamps say).
    Generation reads a long video window by window, in order: the sequential decoder resumes where the previous
    window stopped, so reading a whole video costs one pass (time linear in its length, memory one chunk).
    """

    def __init__(self, path: Path):
        self.path = path
        self.width, self.height, self.has_audio, self.rotation = _header(path)
        self.span = _packet_span(path)
        self.vr = _decord_reader(path)
        ts = _decord_times(self.vr)
        self.by_index = _times_agree(ts, self.span.times)
        if self.by_index:
            self.times = ts  # [N] as before: decord's times (exact for VFR)
        else:
            n = len(self.vr)
            # the packets' times when they name one frame each, else an even grid over the stream's duration
            self.times = (self.span.times if len(self.span.times) == n
                          else np.arange(n, dtype=np.float64) * self.span.duration / n)
            log.info("%s: decord's frame times disagree with the container's; decoding in order with PyAV", path)
        self._seq = None  # (container, frame iterator, index of the next frame, last frame) for the PyAV reader

    def info(self) -> VideoInfo:
        n = len(self.times)
        return VideoInfo(path=self.path, duration=self.span.duration, fps=n / self.span.duration, width=self.width,
                         height=self.height, num_frames=n, has_audio=self.has_audio)

    def frames(self, want: np.ndarray, size: tp.Optional[int]) -> torch.Tensor:
        """Frames number ``want`` [u] (sorted, unique), resized (``size``) chunk by chunk: ``uint8 [u, H, W, 3]``.

        Chunks hold at most ~64 MB of source pixels (8 frames of 1080p, 1 of 8000x8000), so a huge frame size
        never multiplies by the window length."""
        chunk = max(1, min(8, CHUNK_BYTES // max(1, self.width * self.height * 3)))
        out = []
        for i in range(0, len(want), chunk):
            part = want[i:i + chunk]
            batch = self._decord(part) if self.by_index else self._sequential(part)
            out.append(batch if size is None else resize_center_crop(batch, size))
        return torch.cat(out)

    def _decord(self, idx: np.ndarray) -> torch.Tensor:
        try:
            return torch.from_numpy(self.vr.get_batch(idx.tolist()).asnumpy())  # [u, h, w, 3]
        except Exception as err:
            # decord 0.6 mis-sizes its output for some frame sizes (e.g. 48x96, 72x128 portrait): PyAV decodes the
            # same frames, found by their timestamps; a truly broken file fails there too
            return _frames_av(self.path, self.times[idx], _short(err), self.rotation)

    def _sequential(self, idx: np.ndarray) -> torch.Tensor:
        import av

        if self._seq is None or self._seq[2] > idx[0]:  # first read, or a window before the decoder's position
            self.close()
            container = _open_av(self.path)
            self._seq = [container, _decoded_frames(container, container.streams.video[0]), 0, None]
        state, out = self._seq, []
        for k in idx:
            while state[2] <= k:
                try:
                    frame = next(state[1], None)
                except av.error.FFmpegError as err:
                    raise MediaError(f"{self.path}: decoding failed ({_short(err)}); the file may be truncated or "
                                     "corrupt, re-encode it") from None
                if frame is None:  # fewer frames than counted: the last one stands in (as for a short video)
                    if state[3] is None:
                        raise MediaError(f"{self.path}: no frame decodes; the file may be corrupt, re-encode it")
                    break
                state[3] = np.rot90(frame.to_ndarray(format="rgb24"), k=self.rotation // 90)
                state[2] += 1
            out.append(np.ascontiguousarray(state[3]))
        return torch.from_numpy(np.stack(out))

    def close(self) -> None:
        if self._seq is not None:
            self._seq[0].close()
            self._seq = None


CHUNK_BYTES = 64 << 20
"""Source pixels (RGB bytes) decoded at once before they are resized: 8 frames of 1080p, 1 of 8000x8000."""


def _decoded_frames(container, stream) -> tp.Iterator:
    """Frames of ``stream`` in display order; packets the decoder rejects are skipped (as FFmpeg's tools do)."""
    import av

    for pkt in container.demux(stream):
        try:
            yield from pkt.decode()
        except av.error.EOFError:
            return
        except av.error.InvalidDataError:
            continue


# Open sources, most recently used last. Generation reads a video window by window and probes it before muxing:
# reopening it each time would re-scan its index (decord and our packet pass both read every packet), which makes
# a long video quadratic in its length. Keyed by the file's identity, so an edited file is reopened.
_SOURCES: "OrderedDict[tp.Tuple[str, int, int], _Source]" = OrderedDict()
_MAX_SOURCES = 8  # a generation batch reads its videos window by window, in turn


def _source(path: Path) -> _Source:
    _check_file(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    src = _SOURCES.pop(key, None)
    if src is None:
        src = _Source(path)
        while len(_SOURCES) >= _MAX_SOURCES:
            _SOURCES.popitem(last=False)[1].close()
    _SOURCES[key] = src
    return src


def probe_video(path: PathLike) -> VideoInfo:
    """Duration, frame rate, size, frame count and audio presence of a video file.

    The duration is the container's (last packet's presentation time - first + one frame interval), the length a
    muxed copy of the video stream lasts. Raises :class:`MediaError` for a missing file, a non-media file, no video
    stream or zero frames.
    """
    path = Path(path)
    return _source(path).info()


# ---------------------------------------------------------------------------------------------------- frames
def nearest_indices(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the entry of sorted ``times`` [N] nearest to each of ``targets`` [T] (ties go to the earlier)."""
    right = np.clip(np.searchsorted(times, targets, side="left"), 0, len(times) - 1)  # [T]
    left = np.clip(right - 1, 0, len(times) - 1)
    pick_left = np.abs(targets - times[left]) <= np.abs(times[right] - targets)
    return np.where(pick_left, left, right)


def read_video_frames(path: PathLike, fps: float = 9.6, size: tp.Optional[int] = 224, start: float = 0.0,
                      duration: float = 10.0) -> tp.Tuple[torch.Tensor, np.ndarray, VideoInfo]:
    """Sample a window of a video at a fixed frame rate.

    Args:
        path: any video file FFmpeg can read (any resolution, portrait, variable frame rate).
        fps: sampling rate of the output frames (9.6 in the paper).
        size: output side; short-side resize then center crop to ``size x size``. ``None`` keeps the source size.
        start: window start in seconds of source time.
        duration: window length in seconds; ``T = round(duration * fps)`` frames come back whatever the video's
            length (a short video is padded by repeating its last frame).

    Returns:
        frames ``uint8 [T, H, W, 3]``, timestamps ``float64 [T]`` (source time of each returned frame, s),
        and the :class:`VideoInfo` of the file (true duration).

    Only the window's frames are decoded, a few at a time, and resized as they come (memory: one chunk of source
    frames plus the window at ``size``); consecutive windows of one file reuse its opened decoder.
    """
    path = Path(path)
    if fps <= 0 or duration <= 0:
        raise MediaError(f"{path}: fps ({fps}) and duration ({duration}) must be positive")
    if start < 0:
        raise MediaError(f"{path}: start ({start}) must be >= 0")
    src = _source(path)
    num = round(duration * fps)
    targets = start + np.arange(num, dtype=np.float64) / fps  # [T]
    idx = nearest_indices(src.times, targets)  # [T]
    uniq, inverse = np.unique(idx, return_inverse=True)
    frames = src.frames(uniq, size)[torch.from_numpy(inverse.reshape(-1))]  # [T, H, W, 3]
    return frames.contiguous(), src.times[idx], src.info()


def _frames_av(path: Path, times: np.ndarray, why: str, rotation: int = 0) -> torch.Tensor:
    """Fallback decoder: frames whose time (pts after the stream's first pts, as decord counts) equals ``times``
    [u] (sorted), ``uint8 [u, h, w, 3]``. Seeks near the first frame; when the container seeks imprecisely
    (MPEG-TS has no index) it decodes from the start instead."""
    import av

    tol = 1e-3 if len(times) < 2 else min(1e-3, float(np.min(np.diff(times))) / 2 + 1e-9)
    for seek in ([True, False] if times[0] > 1.0 else [False]):
        out: tp.List[tp.Optional[np.ndarray]] = [None] * len(times)
        with _open_av(path) as container:
            stream = container.streams.video[0]
            tb = stream.time_base
            origin = stream.start_time or 0  # decord's times start at the video stream's first pts
            try:
                if seek:
                    container.seek(origin + int((times[0] - 1.0) / tb), stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = float((frame.pts - origin) * tb)
                    j = int(np.argmin(np.abs(times - t)))
                    if abs(times[j] - t) <= tol and out[j] is None:
                        # decord shows frames as displayed (display-matrix rotation applied): do the same
                        out[j] = np.rot90(frame.to_ndarray(format="rgb24"), k=rotation // 90)
                    if t > times[-1] + 1.0 or all(o is not None for o in out):
                        break
            except av.error.FFmpegError as err:
                why = _short(err)
        if all(o is not None for o in out):
            return torch.from_numpy(np.ascontiguousarray(np.stack(out)))
    raise MediaError(f"{path}: decoding failed ({why}); the file may be truncated or corrupt, re-encode it")


def resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Short-side resize + center crop, ``uint8 [T, h, w, 3] -> [T, size, size, 3]``.

    Cropping the central ``min(h, w)`` square first and then resizing it is the same operation (up to where the
    half-pixel offset rounds) and resizes fewer pixels. Bilinear with antialias, so large downscales do not alias.
    """
    T, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = frames[:, top:top + side, left:left + side]  # [T, side, side, 3]
    if side == size:
        return x.contiguous()
    # a channels-last uint8 view hits torch's fast antialiased uint8 kernel: ~9x faster than going through float
    # (0.03 s vs 0.23 s for 8 frames of 720x720), same result within 1 grey level
    x = rearrange(x, "t h w c -> t c h w")  # [T, 3, side, side], channels-last strides
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return rearrange(x, "t c h w -> t h w c").contiguous()


def normalize_frames(x: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, T, H, W, 3]`` or ``[T, H, W, 3]`` -> ImageNet-normalised ``float [B, 3, T, H, W]``."""
    if x.dim() == 4:
        x = x[None]
    if x.dim() != 5 or x.shape[-1] != 3:
        raise ValueError(f"normalize_frames expects [B, T, H, W, 3] or [T, H, W, 3], got {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1, 1)
    x = rearrange(x, "b t h w c -> b c t h w").float() / 255.0  # [B, 3, T, H, W]
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------------- audio
def read_audio(path: PathLike, sr: int = 32000, start: float = 0.0, duration: tp.Optional[float] = None,
               allow_missing: bool = False) -> torch.Tensor:
    """Mono float32 audio ``[N]`` at ``sr`` from a video or audio file.

    The channels are mixed down (:func:`downmix_weights`: stereo is the mean of its channels, 5.1 follows
    ITU-R BS.775 without the LFE), then resampled with a windowed-sinc filter (torchaudio). Packets that fail to
    decode are skipped (logged with a count) and their time left silent. With ``duration`` the
    result has exactly ``round(duration * sr)`` samples (zero-padded past the end of the stream); without it, it
    runs to the end. A file with no audio stream raises :class:`MediaError`, or with ``allow_missing`` returns
    silence as long as the requested window (or the video) would be.
    """
    path = Path(path)
    if start < 0:
        raise MediaError(f"{path}: start ({start}) must be >= 0")
    want = None if duration is None else round(duration * sr)
    with _open_av(path) as container:
        if not container.streams.audio:
            if not allow_missing:
                raise MediaError(f"{path}: no audio stream; pass a file with audio (or allow_missing=True)")
            if want is None:
                length = container.duration / 1e6 if container.duration else 0.0
                if container.streams.video:
                    length = probe_video(path).duration
                want = max(0, round((length - start) * sr))
            return torch.zeros(want, dtype=torch.float32)
        stream = container.streams.audio[0]
        native = _decode_audio(container, stream, path, start, duration, _origin(container))  # (samples, rate)
    wav, rate = native
    wav_t = resample_audio(torch.from_numpy(wav), rate, sr)
    if want is not None:
        wav_t = torch.nn.functional.pad(wav_t, (0, max(0, want - wav_t.numel())))[:want]
    return wav_t.contiguous()


RESAMPLE_CHUNK = 1 << 18
"""Input samples resampled at once by :func:`resample_audio` (torchaudio's kernel works on an unfolded copy of its
input many times its size: a 10-minute track in one call took ~0.5 GB)."""


def resample_audio(wav: torch.Tensor, rate: int, sr: int, chunk: tp.Optional[int] = None) -> torch.Tensor:
    """``float [N]`` at ``rate`` -> ``[ceil(N * sr / rate)]`` at ``sr`` with torchaudio's windowed-sinc resampler, in
    chunks of about ``chunk`` input samples (default :data:`RESAMPLE_CHUNK`) with real neighbours on both sides
    wider than the kernel, so the result equals one call on the whole signal (to float rounding) with memory
    bounded by the chunk."""
    if rate == sr:
        return wav
    import torchaudio.functional as AF

    g = math.gcd(int(rate), int(sr))
    period = int(rate) // g  # input samples per whole number of output samples
    chunk = RESAMPLE_CHUNK if chunk is None else chunk
    step = max(1, chunk // period) * period
    n = wav.numel()
    if n <= step:
        return AF.resample(wav, rate, sr)
    width = math.ceil(6 * period / min(period, int(sr) // g) / 0.99) + 1  # the kernel's reach, input samples
    margin = -(-width // period) * period + period
    parts = []
    for s in range(0, n, step):
        a, b = max(0, s - margin), min(n, s + step + margin)
        out = AF.resample(wav[a:b], rate, sr)
        first = (s - a) // period * (int(sr) // g)
        count = (min(n, s + step) - s) // period * (int(sr) // g) if s + step < n else out.numel() - first
        parts.append(out[first: first + count].clone())
    return torch.cat(parts)


def _origin(container) -> float:
    """Time (s) that counts as 0: the video stream's first pts (as decord counts frame times), else the audio's.

    Containers such as MPEG-TS start at an arbitrary clock (e.g. 1.4 s) and their audio and video streams start
    at slightly different times; measuring both from one origin keeps them in sync.
    """
    for streams in (container.streams.video, container.streams.audio):
        if streams and streams[0].start_time is not None and streams[0].time_base:
            return float(streams[0].start_time * streams[0].time_base)
    return 0.0


def _decode_frames(container, stream, path: Path, start: float, duration: tp.Optional[float], origin: float,
                   emit: tp.Callable[[np.ndarray, tp.Tuple[str, ...], float], None]) -> tp.Tuple[int, float, float]:
    """Decode [start, start+duration) (seconds after ``origin``) of ``stream`` at its own rate, handing each
    piece to ``emit(samples float32 [C, n], channel names, time of the first frame)``; returns ``(rate,
    time of the first frame, end)`` where ``end`` is the stream's end (s after ``start``) from its header when
    ``duration`` is None and the header has one, else ``duration`` (None: run to the last sample).

    As robust as FFmpeg's own tools: a packet the decoder rejects (a damaged AC3 sync word, an MP3 frame cut by an
    AVI chunk) is skipped and counted, not the end of the stream. Its time span is filled with silence when the next
    frame's timestamp says audio is missing, so what follows stays in sync with the picture.
    """
    import av

    rate = stream.codec_context.sample_rate or stream.rate
    if not rate:
        raise MediaError(f"{path}: audio stream has no sample rate; re-encode the audio")
    # planar float at the native rate and layout: no rate change, so swr adds no delay; we downmix ourselves (swr's
    # stereo -> mono scales each channel by 1/sqrt(2), which is not the mean)
    resampler = av.AudioResampler(format="fltp", rate=rate)
    tb = stream.time_base
    if start > 0 and tb:
        try:
            container.seek(int((origin + start) / tb), stream=stream, backward=True)
        except Exception:
            container.seek(0, stream=stream)
    end = None if duration is None else start + duration
    first_time: tp.Optional[float] = None
    got = packets = skipped = 0
    reason, lost = "", False  # why the last skipped packet failed; a packet was skipped since the last frame
    names: tp.Tuple[str, ...] = ()

    def add(out) -> None:
        nonlocal got, names
        names = tuple(c.name for c in out.layout.channels)
        arr = out.to_ndarray().astype(np.float32)  # [C, n]
        emit(arr, names, first_time)
        got += arr.shape[1]

    try:
        for pkt in container.demux(stream):
            packets += pkt.size > 0
            try:
                frames = pkt.decode()
            except av.error.EOFError:
                break
            except av.error.FFmpegError as err:
                skipped, reason, lost = skipped + 1, _short(err), True
                continue
            for frame in frames:
                t = float(frame.pts * tb) - origin if frame.pts is not None and tb else None
                if first_time is None:
                    first_time = t if t is not None else 0.0
                elif lost and t is not None:  # fill the skipped packets' span (measured from this frame's time)
                    gap = round((t - first_time) * rate) - got
                    if gap > 0:
                        emit(np.zeros((len(names), gap), np.float32), names, first_time)
                        got += gap
                lost = False
                for out in resampler.resample(frame):
                    add(out)
            if end is not None and first_time is not None and first_time + got / rate >= end:
                break
        for out in resampler.resample(None):
            add(out)
    except av.error.FFmpegError as err:  # a truncated tail: keep what decoded, the caller zero-pads
        reason = _short(err)
    if not got:
        raise MediaError(f"{path}: cannot decode the audio stream ({reason or 'no audio frames'}); the file may "
                         "be truncated or corrupt")
    if skipped:
        log.warning("%s: skipped %d of %d audio packets that failed to decode (%s); their time is silent", path,
                    skipped, packets, reason)
    if duration is None and stream.duration and tb:  # drop the codec's padding of its last frame (AAC: 1024)
        stream_start = float(stream.start_time * tb) - origin if stream.start_time is not None else 0.0
        duration = max(0.0, stream_start + float(stream.duration * tb) - start)
    return rate, (0.0 if first_time is None else first_time), duration


def _decode_audio(container, stream, path: Path, start: float, duration: tp.Optional[float], origin: float = 0.0):
    """Decode [start, start+duration) (seconds after ``origin``) of ``stream`` to mono float32 at its own rate
    (:func:`_decode_frames`, channels mixed down by :func:`downmix_weights`): (samples [n], rate)."""
    chunks: tp.List[np.ndarray] = []
    weights: tp.Dict[tp.Tuple[str, ...], np.ndarray] = {}

    def emit(arr: np.ndarray, names: tp.Tuple[str, ...], first_time: float) -> None:
        w = weights.setdefault(names, downmix_weights(names))
        chunks.append(w @ arr)  # [C] @ [C, n] -> [n]

    rate, first_time, duration = _decode_frames(container, stream, path, start, duration, origin, emit)
    wav = np.concatenate(chunks)
    offset = round((start - first_time) * rate)  # samples to drop (>0) or zeros to prepend (<0)
    if offset > 0:
        wav = wav[offset:]
    elif offset < 0:
        wav = np.concatenate([np.zeros(-offset, np.float32), wav])
    if duration is not None:
        wav = wav[: round(duration * rate)]
    return wav, rate


AAC_LAYOUTS = {("FC",): "mono", ("FL", "FR"): "stereo", ("FL", "FR", "FC", "LFE", "BL", "BR"): "5.1",
               ("FL", "FR", "FC", "LFE", "SL", "SR"): "5.1"}
"""Channel layouts the finished MP4's AAC track carries, by FFmpeg channel names -> the encoder's layout. AAC has one
5.1 (its surrounds are one pair): a 5.1(side) source (AC3, most DVDs and cameras) is written as 5.1, its side pair
as the surround pair; the channel weights and downmix are the same. Any other layout is downmixed to stereo."""


@dataclass
class AudioTrack:
    """The video's own audio as :func:`read_audio_track` reads it."""

    track: tp.Any
    """:class:`vmas.mixing.Track` ``[C, N]`` at ``sample_rate``."""
    sample_rate: int
    layout: tp.Tuple[str, ...]
    """FFmpeg channel names of the channels of ``track``."""
    note: str = ""
    """One line when the layout was changed (downmixed to stereo for the output codec), else empty."""


def read_audio_track(path: PathLike, sr: int, duration: tp.Optional[float] = None,
                     folder: tp.Optional[PathLike] = None, layouts: tp.Optional[tp.Collection] = None
                     ) -> AudioTrack:
    """All channels of the first audio stream of ``path`` at ``sr``, streamed into a :class:`vmas.mixing.Track`
    (a float32 file in ``folder``; in memory when None): memory is a few blocks whatever the length.

    The same samples as :func:`read_audio` per channel (same decoding, offset, trimming and resampler, chunk for
    chunk; a mono file gives exactly :func:`read_audio`'s samples). A layout outside ``layouts`` (channel-name
    tuples; default: any) is downmixed to stereo (ITU-R BS.775, :func:`vmas.mixing.stereo_downmix`) as it is
    decoded, and ``note`` says so.
    """
    from vmas.mixing import Track, stereo_downmix

    path = Path(path)
    with _open_av(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream; pass a file with audio")
        stream = container.streams.audio[0]
        state: tp.Dict[str, tp.Any] = {"track": None, "pos": 0, "offset": 0, "names": None, "matrix": None}

        def emit(arr: np.ndarray, names: tp.Tuple[str, ...], first_time: float) -> None:
            if state["track"] is None:  # the first frame fixes the layout (and the offset, as in read_audio)
                state["names"], state["offset"] = names, round((0.0 - first_time) * rate_of[0])
                if layouts is not None and names not in layouts:
                    state["matrix"], state["names"] = stereo_downmix(names), ("FL", "FR")
                state["track"] = Track.like(len(state["names"]), 0, folder)
            if names != state["names"] and state["matrix"] is None:  # the layout changed mid-stream: map by name
                mapped = np.zeros((len(state["names"]), arr.shape[1]), np.float32)
                for i, nm in enumerate(names):
                    if nm in state["names"]:
                        mapped[state["names"].index(nm)] = arr[i]
                arr = mapped
            elif state["matrix"] is not None:
                arr = (stereo_downmix(names) @ arr).astype(np.float32)
            at = state["pos"] - state["offset"]  # position in the result: offset samples dropped or prepended
            state["pos"] += arr.shape[1]
            if at + arr.shape[1] <= 0:
                return
            if at < 0:
                arr, at = arr[:, -at:], 0
            state["track"].write(at, arr)

        rate_of = [stream.codec_context.sample_rate or stream.rate]
        rate, _, stream_duration = _decode_frames(container, stream, path, 0.0, duration, _origin(container), emit)
    native = state["track"]
    source_names = state["names"]
    if stream_duration is not None:
        native.n = min(native.n, round(stream_duration * rate))
    out = _resample_track(native, rate, sr, Track.like(native.channels, 0, folder))
    if out is not native:
        native.close()
    if duration is not None:
        out.n = round(duration * sr)  # zeros past the end of the stream (Track reads), as read_audio pads
    note = ""
    if state["matrix"] is not None:
        note = (f"its {len(source_names) if source_names else '?'}-channel audio is downmixed to stereo (the MP4's "
                "AAC track takes mono, stereo and 5.1)")
    return AudioTrack(track=out, sample_rate=sr, layout=tuple(state["names"]), note=note)


def _resample_track(src, rate: int, sr: int, out):
    """:func:`resample_audio` of every channel of the Track ``src`` into the Track ``out`` (``src`` itself when
    the rates agree), chunk for chunk as :func:`resample_audio` cuts a whole signal, so each channel equals it."""
    if rate == sr:
        return src
    import torchaudio.functional as AF

    g = math.gcd(int(rate), int(sr))
    period = int(rate) // g
    step = max(1, RESAMPLE_CHUNK // period) * period
    n = src.n
    if n <= step:
        whole = src.read(0, n)
        out.write(0, np.stack([AF.resample(torch.from_numpy(np.ascontiguousarray(row)), rate, sr).numpy()
                               for row in whole]))
        return out
    width = math.ceil(6 * period / min(period, int(sr) // g) / 0.99) + 1  # the kernel's reach, input samples
    margin = -(-width // period) * period + period
    at = 0
    for s in range(0, n, step):
        a, b = max(0, s - margin), min(n, s + step + margin)
        piece = src.read(a, b)
        rows = []
        for row in piece:
            res = AF.resample(torch.from_numpy(np.ascontiguousarray(row)), rate, sr)
            first = (s - a) // period * (int(sr) // g)
            count = (min(n, s + step) - s) // period * (int(sr) // g) if s + step < n else res.numel() - first
            rows.append(res[first: first + count].numpy())
        out.write(at, np.stack(rows))
        at += rows[0].size
    return out


def write_wav(path: PathLike, wav: tp.Union[torch.Tensor, np.ndarray, tp.Any], sr: int) -> Path:
    """Write 16-bit PCM wav. ``wav`` is float in [-1, 1], ``[N]`` (mono) or ``[C, N]``, or a
    :class:`vmas.mixing.Track` (written block by block); values are clipped."""
    from vmas.mixing import Track, _spans

    path = Path(path)
    if isinstance(wav, Track):
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as f:
            f.setnchannels(wav.channels)
            f.setsampwidth(2)
            f.setframerate(int(sr))
            for s, e in _spans(wav.n):
                pcm = (np.clip(wav.read(s, e).astype(np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
                f.writeframes(np.ascontiguousarray(pcm.T).tobytes())
        return path
    x = wav.detach().cpu().float().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise MediaError(f"{path}: wav must be [N] or [C, N], got shape {tuple(x.shape)}")
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2")  # [C, N]
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(pcm.shape[0])
        f.setsampwidth(2)
        f.setframerate(int(sr))
        f.writeframes(np.ascontiguousarray(pcm.T).tobytes())
    return path


MP4_COPY_CODECS = ("h264", "hevc", "av1", "vp9", "mpeg4")
"""Video codecs copied into an MP4 as they are (MP4 stores them natively and players decode them). Any other codec
(MS-MPEG4, MJPEG, Cinepak, Indeo, MPEG-2, VP8, ...) and any video in an AVI (whose demuxer invents presentation
times from chunk order, so B-frames come out mistimed) is re-encoded to H.264 instead."""
REENCODE_CRF = 18
"""x264 constant-rate factor of a re-encoded video: 18 is visually close to a decent source."""


def mp4_video_plan(path: PathLike) -> str:
    """``"copy"`` when the video stream of ``path`` goes into an MP4 as it is, else ``"h264"`` (re-encode)."""
    span = _source(Path(path)).span
    return "copy" if span.codec in MP4_COPY_CODECS and span.format != "avi" else "h264"


def reencode_h264(video_path: PathLike, out_path: PathLike, crf: int = REENCODE_CRF,
                  preset: str = "veryfast") -> Path:
    """A video-only MP4 holding the picture of ``video_path`` as H.264: decoded frame k at the time
    :func:`read_video_frames` gives frame k (the first at 0), so the frame count, frame timing and duration are
    the source's as :func:`probe_video` reports them. Packets the decoder rejects are skipped, as FFmpeg does.
    Odd frame sizes use 4:4:4 (4:2:0 needs even sizes)."""
    import av

    video_path, out_path = Path(video_path), Path(out_path)
    src = _source(video_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _open_av(video_path) as inp, av.open(str(out_path), "w", format="mp4") as out:
            vin = inp.streams.video[0]
            tb = vin.time_base or Fraction(1, 90000)
            rate = vin.average_rate or vin.guessed_rate or Fraction(25)
            step = max(1, round(1 / (float(rate) * float(tb))))  # one frame interval in the stream's time base
            w, h = vin.codec_context.width, vin.codec_context.height
            # no B-frames: decode order = display order, so the track's end (last sample + its duration) is the
            # last frame's end and the source's duration carries over exactly (with B-frames the MP4's stated
            # duration includes the reordering delay)
            vout = out.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset, "bf": "0"})
            vout.width, vout.height = w, h
            vout.pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
            vout.time_base = vout.codec_context.time_base = tb
            if src.rotation:
                vout.set_display_rotation(src.rotation)
            last = None  # pts of the last frame written (output time base = the source's)
            end = round(src.span.duration / float(tb))  # the source's end: the last frame shows until then
            held: tp.List[tp.Any] = []  # the latest packet, muxed when the next one comes (or at the end)

            def mux(pkt) -> None:
                if held:
                    out.mux(held.pop())
                held.append(pkt)

            for k, frame in enumerate(_decoded_frames(inp, vin)):
                # frame k shows at the time our reader gives frame k (the container's times, not a decoder's
                # pts that AVI B-frames scramble); frames beyond the count follow one interval apart
                pts = round(float(src.times[k]) / float(tb)) if k < len(src.times) else None
                if pts is None or (last is not None and pts <= last):
                    pts = 0 if last is None else last + step
                last = pts
                # a fresh frame (no side data such as the rotation carried over); full-range (JPEG) YUV goes through
                # RGB so its levels are rescaled to the encoder's limited range instead of being copied as they are
                if frame.format.name.startswith("yuvj"):
                    frame = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                frame = frame.reformat(format=vout.pix_fmt)
                frame.pts, frame.time_base = pts, tb
                for pkt in vout.encode(frame):
                    mux(pkt)
            if last is None:
                raise MediaError(f"{video_path}: no frame decodes; the file may be corrupt, re-encode it")
            for pkt in vout.encode(None):
                mux(pkt)
            if held:
                # an MP4 track ends at its last sample (in decode order) + that sample's duration: ending it at the
                # source's end gives the last frame its display duration from the source (a sparse AVI's dropped
                # entries, a VFR file's last interval), whatever the encoder's reordering delay
                pkt = held.pop()
                pkt.duration = max(1, max(end, last + 1) - pkt.dts)
                out.mux(pkt)
    except MediaError:
        out_path.unlink(missing_ok=True)
        raise
    except Exception as err:
        out_path.unlink(missing_ok=True)
        raise MediaError(f"{video_path}: re-encoding the video to H.264 failed ({_short(err)})") from None
    return out_path


def mp4_video_source(video_path: PathLike, work_dir: PathLike) -> tp.Tuple[Path, str]:
    """(a file whose video stream can be copied into an MP4, one line saying how it was made).

    The file is ``video_path`` itself when its codec goes into an MP4 as it is (``"copied"``); otherwise a
    temporary H.264 re-encode in ``work_dir`` (the caller deletes it; see :func:`reencode_h264`). Made once, it
    can be muxed with several audio tracks (the loudness loop re-encodes the audio, not the picture).
    """
    video_path = Path(video_path)
    if mp4_video_plan(video_path) == "copy":
        return video_path, "video copied"
    codec = _source(video_path).span.codec
    tmp = Path(work_dir) / f".{video_path.stem}.h264.tmp.mp4"
    reencode_h264(video_path, tmp)
    return tmp, f"video re-encoded to H.264 (CRF {REENCODE_CRF}; MP4 does not take {codec} from {video_path.suffix})"


def mux_audio(video_path: PathLike, wav: tp.Union[PathLike, torch.Tensor, np.ndarray], out_path: PathLike,
              sr: tp.Optional[int] = None, bitrate: tp.Optional[int] = None, duration: tp.Optional[float] = None,
              layout: tp.Optional[tp.Sequence[str]] = None) -> Path:
    """Copy of ``video_path`` with ``wav`` as its (only) audio track.

    The video stream is copied packet by packet when the output takes its codec (no re-encode, so no quality loss
    and no drift; :data:`MP4_COPY_CODECS`), else re-encoded to H.264 with the same frame times
    (:func:`reencode_h264`; a warning says so). The audio is encoded as AAC at ``sr`` and padded with silence or
    trimmed so it lasts exactly as long as the video stream written (its container duration). Any audio track
    already in the video is dropped. Packets are interleaved as they are read: memory does not grow with length.

    Args:
        wav: a wav/audio file path (read at ``sr``, or its own rate when ``sr`` is None, mixed to mono), a float
            tensor/array ``[N]`` / ``[1, N]`` at ``sr`` (required then), or a :class:`vmas.mixing.Track`
            ``[C, N]`` (read block by block) whose channels are named ``layout`` (one of :data:`AAC_LAYOUTS`;
            default mono / stereo by channel count).
        bitrate: AAC bit rate; default 128 kbit/s for mono plus 64 kbit/s per further channel.
        duration: keep only the first ``duration`` seconds of the video (``vmas generate --duration``): packets are
            dropped from the first one decoded after that time, so every frame shown before it still decodes, and
            the last packet kept lasts until ``duration``: the video stream and the audio both last ``duration``
            (the last frame shown stays until then, however sparse the frames).
    """
    from vmas.mixing import Track

    video_path, out_path = Path(video_path), Path(out_path)
    if isinstance(wav, Track):
        if sr is None:
            raise MediaError(f"{out_path}: mux_audio needs sr= when wav is a track")
        samples = wav
    elif isinstance(wav, (str, Path)):
        wav_path = Path(wav)
        if sr is None:
            with _open_av(wav_path) as c:
                if not c.streams.audio:
                    raise MediaError(f"{wav_path}: no audio stream to mux")
                sr = c.streams.audio[0].codec_context.sample_rate
        samples = read_audio(wav_path, sr=sr).numpy()
    else:
        if sr is None:
            raise MediaError(f"{out_path}: mux_audio needs sr= when wav is an array")
        samples = (wav.detach().cpu().float().numpy() if isinstance(wav, torch.Tensor)
                   else np.asarray(wav, np.float32)).reshape(-1)
    source, how = mp4_video_source(video_path, out_path.parent)
    try:
        if source != video_path:
            log.warning("%s: %s", video_path, how)
        return _mux_copy(source, video_path, samples, sr, out_path, bitrate, duration, layout)
    finally:
        if source != video_path:
            source.unlink(missing_ok=True)


def _is_flush(pkt) -> bool:
    """The demuxer's end-of-stream packet (no timestamps at all). Only it is skipped: a Matroska B-frame stream's
    first packets also come without a dts (the container stores presentation times only) and are real frames."""
    return pkt.pts is None and pkt.dts is None


def _with_dts(packets: tp.Iterable, step: int) -> tp.Iterator:
    """``packets`` (demux order), each with a decode time stamp, for a muxer that needs one on every packet.

    Matroska stores presentation times only; FFmpeg's demuxer derives a dts from them once the reordering delay is
    known, so with B-frames the first packets (the keyframe, a P frame) have none. Dropping them lost the keyframe
    and the picture started late (issue 35). They get the dts just before the first known one, one frame interval
    (``step`` ticks) apart and never above their own pts; a packet later on without one gets the previous dts + 1
    interval (capped the same way). The muxer turns a negative first dts into an edit list, so the presentation
    still starts at the source's first pts."""
    waiting: tp.List[tp.Any] = []  # leading packets without a dts
    last: tp.Optional[int] = None  # dts of the previous packet yielded
    for pkt in packets:
        if pkt.dts is None and last is None:
            waiting.append(pkt)
            continue
        if pkt.dts is None:  # mid-stream: the next interval, kept below its pts and above the previous dts
            pkt.dts = max(last + 1, min(last + step, pkt.pts))
        for i, w in enumerate(waiting):  # the leading packets, spaced before the first known dts
            w.dts = pkt.dts - (len(waiting) - i) * step
            if w.pts is not None:
                w.dts = min(w.dts, w.pts)
            yield w
        waiting = []
        last = pkt.dts
        yield pkt
    for i, w in enumerate(waiting):  # no packet had a dts: presentation order is decode order
        w.dts = w.pts if w.pts is not None else i * step
        yield w


def _cut_before(path: Path, seconds: float) -> tp.Tuple[int, int]:
    """(how many packets to keep, in demux (decode) order; the first presentation time, ticks) to keep
    ``seconds`` of ``path``'s video.

    The packets up to the last one (in decode order) of a frame shown before ``seconds`` are kept: every frame shown
    before ``seconds`` and every reference frame it needs, so the copy decodes cleanly without re-encoding. That last
    packet is shown before ``seconds``, so giving it the duration up to ``seconds`` ends the MP4 track there (its
    stated end is its last packet's presentation time + duration), with or without B-frames and at any frame rate.
    """
    with _open_av(path) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        pts = [p.pts if p.pts is not None else p.dts for p in container.demux(stream) if not _is_flush(p)]
    first = min(pts)
    limit = first + max(1, round(seconds / tb))
    shown = [i for i, t in enumerate(pts) if t < limit]
    return (shown[-1] + 1 if shown else 1), first


def _mux_copy(source: Path, video_path: Path, samples: tp.Any, sr: int, out_path: Path, bitrate: tp.Optional[int],
              duration: tp.Optional[float] = None, layout: tp.Optional[tp.Sequence[str]] = None) -> Path:
    """Mux the video stream of ``source`` (copied) with ``samples`` [N] at ``sr`` (AAC, fitted to the video's
    duration) into ``out_path``, through a temporary file so a failure leaves nothing half-written. ``duration``:
    only that much of the video (see :func:`mux_audio`)."""
    import av

    # the source's duration (a re-encode ends where its source does: reencode_h264), the picture's own timing
    span = _packet_span(source)  # the copied stream's packet times
    end, limit, first_pts = (_source(video_path).span.duration if source != video_path else span.duration), None, 0
    if duration is not None and duration < end:
        # --duration N: the picture ends at N exactly (the last frame kept shows until N, however sparse the
        # frames), and the audio with it
        limit, first_pts = _cut_before(source, duration)
        end = duration
    from vmas.mixing import Track, default_layout

    n = round(end * sr)
    track = Track.of(samples)
    names = tuple(layout) if layout is not None else (("FC",) if track.channels == 1
                                                      else default_layout(track.channels))
    if names not in AAC_LAYOUTS or len(names) != track.channels:
        raise MediaError(f"{out_path}: the MP4's AAC track takes mono, stereo or 5.1, not {len(names)} channels "
                         f"{names}; downmix first (read_audio_track(layouts=AAC_LAYOUTS))")
    aac_layout = AAC_LAYOUTS[names]
    bitrate = bitrate or 128_000 + 64_000 * (track.channels - 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".tmp" + out_path.suffix)
    try:
        with _open_av(source) as src, av.open(str(tmp), "w") as dst:
            vin = src.streams.video[0]
            vout = dst.add_stream_from_template(vin)
            aout = dst.add_stream("aac", rate=sr, layout=aac_layout)
            aout.bit_rate = bitrate

            # one frame interval in ticks: spaces the dts given to packets that have none (_with_dts)
            dt = float(np.median(np.diff(span.times))) if len(span.times) > 1 else 0.0  # s
            step = max(1, round(dt / float(vin.time_base)))

            def video():  # (time in s, stream order, packet), in dts order as demuxed
                held, count = None, 0  # with a cut, the last packet waits: its duration ends the track at N
                for pkt in _with_dts((p for p in src.demux(vin) if not _is_flush(p)), step):
                    if limit is not None and count >= limit:  # --duration: _cut_before counted these packets
                        break
                    count += 1
                    pkt.stream = vout
                    if limit is None:
                        yield float(pkt.dts * pkt.time_base), 0, pkt
                        continue
                    if held is not None:
                        yield float(held.dts * held.time_base), 0, held
                    held = pkt
                if held is not None:  # shown before N: it lasts until N
                    shown = held.pts if held.pts is not None else held.dts
                    held.duration = max(1, round(end / float(held.time_base)) + first_pts - shown)
                    yield float(held.dts * held.time_base), 0, held

            def audio():
                for i in range(0, n, 1024):
                    chunk = track.read(i, min(n, i + 1024)).astype(np.float32)  # [C, m], zeros past its end
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=aac_layout)
                    frame.sample_rate, frame.pts = sr, i
                    for pkt in aout.encode(frame):
                        yield float(pkt.dts * pkt.time_base), 1, pkt
                for pkt in aout.encode(None):
                    yield float(pkt.dts * pkt.time_base), 1, pkt

            for _, _, pkt in heapq.merge(video(), audio(), key=lambda p: (p[0], p[1])):
                dst.mux(pkt)
        tmp.replace(out_path)
    except MediaError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise MediaError(f"{out_path}: muxing audio into {video_path} failed ({_short(err)})") from None
    return out_path


def audio_duration(path: PathLike) -> float:
    """Duration in seconds of the first audio stream (0.0 when there is none)."""
    path = Path(path)
    with _open_av(path) as c:
        if not c.streams.audio:
            return 0.0
        s = c.streams.audio[0]
        if s.duration and s.time_base:
            return float(s.duration * s.time_base)
        return float(c.duration / 1e6) if c.duration else 0.0


__all__ = ["VideoInfo", "probe_video", "read_video_frames", "read_audio", "read_audio_track", "AudioTrack",
           "AAC_LAYOUTS", "write_wav", "mux_audio",
           "mp4_video_plan", "mp4_video_source", "reencode_h264", "MP4_COPY_CODECS", "downmix_weights",
           "normalize_frames", "nearest_indices", "resize_center_crop", "audio_duration", "IMAGENET_MEAN", "IMAGENET_STD"]
