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

import re
import typing as tp
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vmas.errors import MediaError

PathLike = tp.Union[str, Path]

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
    text = str(err).strip().splitlines()
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


def _frame_times(vr, path: Path) -> np.ndarray:
    """Per-frame presentation times in seconds, float64 [N] (decord reads them from the packets' pts)."""
    try:
        ts = np.asarray(vr.get_frame_timestamp(np.arange(len(vr))), dtype=np.float64)[:, 0]  # [N]
    except Exception as err:
        raise MediaError(f"{path}: cannot read frame timestamps ({_short(err)}); re-encode the file") from None
    if not np.all(np.isfinite(ts)):
        raise MediaError(f"{path}: frames without timestamps; re-encode the file (e.g. ffmpeg -i in.mp4 out.mp4)")
    return ts


def _info_from(path: Path, ts: np.ndarray, width: int, height: int, has_audio: bool) -> VideoInfo:
    n = len(ts)
    dt = float(np.median(np.diff(ts))) if n > 1 else 0.0
    if dt <= 0:  # a single frame, or broken pts: a 1/25 s still is the least surprising answer
        dt = 1.0 / 25.0
    duration = float(ts[-1] + dt)
    return VideoInfo(path=path, duration=duration, fps=n / duration, width=width, height=height, num_frames=n,
                     has_audio=has_audio)


def probe_video(path: PathLike) -> VideoInfo:
    """Duration, frame rate, size, frame count and audio presence of a video file.

    Raises :class:`MediaError` for a missing file, a non-media file, no video stream or zero frames.
    """
    path = Path(path)
    width, height, has_audio, _ = _header(path)
    vr = _decord_reader(path)
    ts = _frame_times(vr, path)
    return _info_from(path, ts, width, height, has_audio)


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
    """
    path = Path(path)
    if fps <= 0 or duration <= 0:
        raise MediaError(f"{path}: fps ({fps}) and duration ({duration}) must be positive")
    if start < 0:
        raise MediaError(f"{path}: start ({start}) must be >= 0")
    width, height, has_audio, rotation = _header(path)
    # decoded at the source size (decord's own resize mis-sizes some portrait outputs), resized here in chunks
    vr = _decord_reader(path)
    ts = _frame_times(vr, path)  # [N]
    info = _info_from(path, ts, width, height, has_audio)

    num = round(duration * fps)
    targets = start + np.arange(num, dtype=np.float64) / fps  # [T]
    idx = nearest_indices(ts, targets)  # [T]
    uniq, inverse = np.unique(idx, return_inverse=True)
    chunks, decord_error = [], None
    for i in range(0, len(uniq), _CHUNK):  # bounded memory: a 1080p chunk of 8 frames is ~50 MB
        want = uniq[i:i + _CHUNK]
        try:
            if decord_error is not None:
                raise RuntimeError(decord_error)
            batch = torch.from_numpy(vr.get_batch(want.tolist()).asnumpy())  # [u, h, w, 3]
        except Exception as err:
            # decord 0.6 mis-sizes its output for some frame sizes (e.g. 48x96, 72x128 portrait): PyAV decodes
            # the same frames, found by their timestamps; a truly broken file fails there too
            decord_error = _short(err)
            batch = _frames_av(path, ts[want], decord_error, rotation)
        chunks.append(batch if size is None else resize_center_crop(batch, size))
    frames = torch.cat(chunks)[torch.from_numpy(inverse.reshape(-1))]  # [T, H, W, 3]
    return frames.contiguous(), ts[idx], info


_CHUNK = 8


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

    The channels are averaged, then resampled with a windowed-sinc filter (torchaudio). With ``duration`` the
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
    wav_t = torch.from_numpy(wav)
    if rate != sr:
        import torchaudio.functional as AF

        wav_t = AF.resample(wav_t, rate, sr)
    if want is not None:
        wav_t = torch.nn.functional.pad(wav_t, (0, max(0, want - wav_t.numel())))[:want]
    return wav_t.contiguous()


def _origin(container) -> float:
    """Time (s) that counts as 0: the video stream's first pts (as decord counts frame times), else the audio's.

    Containers such as MPEG-TS start at an arbitrary clock (e.g. 1.4 s) and their audio and video streams start
    at slightly different times; measuring both from one origin keeps them in sync.
    """
    for streams in (container.streams.video, container.streams.audio):
        if streams and streams[0].start_time is not None and streams[0].time_base:
            return float(streams[0].start_time * streams[0].time_base)
    return 0.0


def _decode_audio(container, stream, path: Path, start: float, duration: tp.Optional[float], origin: float = 0.0):
    """Decode [start, start+duration) (seconds after ``origin``) of ``stream`` to mono float32 at its own rate:
    (samples [n], rate)."""
    import av

    rate = stream.codec_context.sample_rate or stream.rate
    if not rate:
        raise MediaError(f"{path}: audio stream has no sample rate; re-encode the audio")
    # planar float at the native rate and layout: no rate change, so swr adds no delay; we average the channels
    # ourselves (swr's downmix scales stereo by 1/sqrt(2) per channel, which is not the mean)
    resampler = av.AudioResampler(format="fltp", rate=rate)
    tb = stream.time_base
    if start > 0 and tb:
        try:
            container.seek(int((origin + start) / tb), stream=stream, backward=True)
        except Exception:
            container.seek(0, stream=stream)
    end = None if duration is None else start + duration
    chunks: tp.List[np.ndarray] = []
    first_time: tp.Optional[float] = None
    got = 0
    try:
        for frame in container.decode(stream):
            t = float(frame.pts * tb) - origin if frame.pts is not None and tb else None
            for out in resampler.resample(frame):
                arr = out.to_ndarray().astype(np.float32).mean(axis=0)  # [C, n] -> [n]
                if first_time is None:
                    first_time = t if t is not None else 0.0
                chunks.append(arr)
                got += arr.size
            if end is not None and first_time is not None and first_time + got / rate >= end:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().astype(np.float32).mean(axis=0))
    except av.error.FFmpegError as err:
        if not chunks:
            raise MediaError(f"{path}: cannot decode the audio stream ({_short(err)}); the file may be "
                             "truncated or corrupt") from None
        # a truncated tail: keep what decoded, the caller zero-pads to the requested length
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    first_time = 0.0 if first_time is None else first_time
    offset = round((start - first_time) * rate)  # samples to drop (>0) or zeros to prepend (<0)
    if offset > 0:
        wav = wav[offset:]
    elif offset < 0:
        wav = np.concatenate([np.zeros(-offset, np.float32), wav])
    if duration is None and stream.duration and tb:  # drop the codec's padding of its last frame (AAC: 1024)
        stream_start = float(stream.start_time * tb) - origin if stream.start_time is not None else 0.0
        duration = max(0.0, stream_start + float(stream.duration * tb) - start)
    if duration is not None:
        wav = wav[: round(duration * rate)]
    return wav, rate


def write_wav(path: PathLike, wav: tp.Union[torch.Tensor, np.ndarray], sr: int) -> Path:
    """Write 16-bit PCM wav. ``wav`` is float in [-1, 1], ``[N]`` (mono) or ``[C, N]``; values are clipped."""
    path = Path(path)
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


def mux_audio(video_path: PathLike, wav: tp.Union[PathLike, torch.Tensor, np.ndarray], out_path: PathLike,
              sr: tp.Optional[int] = None, bitrate: int = 128_000) -> Path:
    """Copy of ``video_path`` with ``wav`` as its (only) audio track.

    The video stream is copied packet by packet (no re-encode, so no quality loss and no drift); the audio is
    encoded as AAC at ``sr`` and padded with silence or trimmed so it lasts exactly as long as the video. Any
    audio track already in the video is dropped.

    Args:
        wav: a wav/audio file path (read at ``sr``, or its own rate when ``sr`` is None) or a float tensor/array
            ``[N]`` / ``[1, N]`` at ``sr`` (required then).
    """
    import av

    video_path, out_path = Path(video_path), Path(out_path)
    if isinstance(wav, (str, Path)):
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
    info = probe_video(video_path)
    n = round(info.duration * sr)
    samples = np.pad(samples.astype(np.float32), (0, max(0, n - samples.size)))[:n]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".tmp" + out_path.suffix)
    try:
        with _open_av(video_path) as src, av.open(str(tmp), "w") as dst:
            vin = src.streams.video[0]
            vout = dst.add_stream_from_template(vin)
            aout = dst.add_stream("aac", rate=sr, layout="mono")
            aout.bit_rate = bitrate
            packets = []  # (time in s, packet) for both streams, muxed in time order
            for pkt in src.demux(vin):
                if pkt.dts is None:  # the demuxer's flush packet
                    continue
                pkt.stream = vout
                packets.append((float(pkt.dts * pkt.time_base), 0, pkt))
            step = 1024
            for i in range(0, n, step):
                chunk = samples[i:i + step][None]  # [1, n]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sr, i
                for pkt in aout.encode(frame):
                    packets.append((float(pkt.dts * pkt.time_base), 1, pkt))
            for pkt in aout.encode(None):
                packets.append((float(pkt.dts * pkt.time_base), 1, pkt))
            packets.sort(key=lambda p: (p[0], p[1]))
            for _, _, pkt in packets:
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


__all__ = ["VideoInfo", "probe_video", "read_video_frames", "read_audio", "write_wav", "mux_audio",
           "normalize_frames", "nearest_indices", "resize_center_crop", "audio_duration", "IMAGENET_MEAN", "IMAGENET_STD"]
