"""Exact length (issue 35 part 2): a sparse AVI (an index full of dropped-frame entries, as Cinepak/VfW capture
tools write) keeps its container's duration through the re-encode, the audio ends with the written video, and
``--duration N`` (mux_audio(duration=N)) gives N s of video and audio for sparse, VFR and B-frame inputs."""
from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vmas.data import media

SR = 48000
FPS = 15
SHOWN = [0, 3, 7, 20, 21, 40]  # the frame slots that hold a picture; every other slot is a dropped-frame entry


def sparse_avi(path, shown=SHOWN, fps: int = FPS, seconds_audio: float = 3.0) -> Path:
    """MPEG-4 Part 2 in an AVI with pictures only in slots ``shown`` (FFmpeg's AVI muxer writes an empty index
    entry, a dropped frame, for every slot in between) and an MP3 tone."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="avi") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        v.codec_context.time_base = Fraction(1, fps)
        for k in shown:
            frame = av.VideoFrame.from_ndarray((rng.random((32, 48, 3)) * 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    if seconds_audio:
        _add_tone(path, seconds_audio)
    return Path(path)


def _add_tone(path, seconds: float) -> None:
    """Rewrite ``path`` (video copied packet for packet, dropped-frame slots kept) with an MP3 tone beside it."""
    tmp = Path(path).with_suffix(".tone.avi")
    sr = 44100
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)
    with av.open(str(path)) as src, av.open(str(tmp), "w", format="avi") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        a = dst.add_stream("mp3", rate=sr, layout="mono")
        for pkt in src.demux(vin):
            if pkt.dts is None:
                continue
            pkt.stream = vout
            dst.mux(pkt)
        for i in range(0, x.size, 1152):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, i:i + 1152]), format="fltp", layout="mono")
            f.sample_rate, f.pts = sr, i
            for p in a.encode(f):
                dst.mux(p)
        for p in a.encode(None):
            dst.mux(p)
    tmp.replace(path)


def video_index_entries(path):
    """(video entries, empty ones) of an AVI's idx1 index: 16-byte entries (chunk id, flags, offset, size)."""
    data = Path(path).read_bytes()
    at = data.rindex(b"idx1")
    size = struct.unpack("<I", data[at + 4: at + 8])[0]
    entries = [struct.unpack("<4sIII", data[i: i + 16]) for i in range(at + 8, at + 8 + size, 16)]
    video = [e for e in entries if e[0][:2] == b"00"]
    return len(video), sum(1 for e in video if e[3] == 0)


def stream_duration(path) -> float:
    """The first video stream's duration as the container states it (what players and ffprobe show)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.duration * s.time_base)


def test_sparse_avi_keeps_the_container_duration(tmp_path):
    """42 index slots at 15 fps, 6 with pictures: the source lasts 42/15 = 2.8 s (the last picture shows for one
    slot, as the index says; the median gap between pictures would have said 3.07 s). The re-encoded mp4's video
    stream states 2.8 s (1 ms: its time base) and the audio ends with it within one AAC frame (1024 samples)."""
    src = sparse_avi(tmp_path / "sparse.avi")
    total, empty = video_index_entries(src)
    assert total >= 40 and empty >= total - len(SHOWN)  # a real sparse index: most entries are dropped frames
    info = media.probe_video(src)
    assert info.duration == pytest.approx(stream_duration(src), abs=1e-9)
    assert info.duration == pytest.approx(total / FPS, abs=1e-9)
    out = media.mux_audio(src, np.zeros(4 * SR, np.float32), tmp_path / "out.mp4", sr=SR)
    assert stream_duration(out) == pytest.approx(info.duration, abs=1e-3)
    assert abs(media.audio_duration(out) - stream_duration(out)) <= 1024 / SR
    assert media.probe_video(out).num_frames == len(SHOWN)


def vfr_mp4(path, times_ms, bframes: int = 2) -> Path:
    """H.264 (with B-frames) in an MP4 whose frames sit at ``times_ms`` (variable frame rate) and an AAC tone."""
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=30, options={"bf": str(bframes)})
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        v.codec_context.time_base = Fraction(1, 1000)
        a = c.add_stream("aac", rate=SR, layout="mono")
        for t in times_ms:
            frame = av.VideoFrame.from_ndarray((rng.random((32, 48, 3)) * 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        n = round((times_ms[-1] / 1000 + 0.1) * SR)
        x = (0.2 * np.sin(2 * np.pi * 330 * np.arange(n) / SR)).astype(np.float32)
        for i in range(0, n, 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, i:i + 1024]), format="fltp", layout="mono")
            f.sample_rate, f.pts = SR, i
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    return Path(path)


@pytest.mark.parametrize("kind", ["sparse avi", "vfr mp4", "cfr mp4 b-frames"])
def test_duration_cut_is_exact_for_every_input(tmp_path, kind):
    """``duration=N`` (vmas generate --duration N): the video stream and the audio both last N within one frame
    of the source (here to 1 ms: the cut sets the last kept frame's duration) whatever the frame spacing around N
    (a sparse AVI's next picture is 0.87 s after N; the VFR file's frames are 20-250 ms apart)."""
    if kind == "sparse avi":
        src, n = sparse_avi(tmp_path / "s.avi"), 1.0
    elif kind == "vfr mp4":
        times = np.cumsum([0] + [20, 250, 40, 180, 33, 90, 250, 20, 60, 140] * 3).tolist()
        src, n = vfr_mp4(tmp_path / "v.mp4", times), 1.3
    else:
        src, n = vfr_mp4(tmp_path / "c.mp4", list(range(0, 3000, 40))), 1.3
    out = media.mux_audio(src, np.zeros(4 * SR, np.float32), tmp_path / "out.mp4", sr=SR, duration=n)
    assert stream_duration(out) == pytest.approx(n, abs=1e-3)
    assert abs(media.audio_duration(out) - n) <= 1024 / SR


def bframe_mkv(path, seconds: float = 3.0, fps: int = 25) -> Path:
    """H.264 with B-frames (x264 ``bf=2``) in Matroska, beside an AAC tone; a smooth moving picture, so x264 does
    use B-frames. Matroska stores presentation times only: the demuxer gives the first packets (the keyframe and
    the P frame after it) no dts."""
    yy, xx = np.mgrid[0:32, 0:48]
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_stream("libx264", rate=fps, options={"bf": "2", "g": str(fps)})
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        v.codec_context.time_base = Fraction(1, 1000)
        a = c.add_stream("aac", rate=SR, layout="mono")
        for k in range(round(seconds * fps)):
            img = np.stack([(xx * 5 + 3 * k) % 256, (yy * 7 + k) % 256, (xx + yy + 2 * k) % 256], -1)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(k * 1000 / fps), Fraction(1, 1000)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        x = (0.2 * np.sin(2 * np.pi * 330 * np.arange(round(seconds * SR)) / SR)).astype(np.float32)
        for i in range(0, x.size, 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, i:i + 1024]), format="fltp", layout="mono")
            f.sample_rate, f.pts = SR, i
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    return Path(path)


def first_frames(path):
    """(time of the first decoded video frame, s; its RGB pixels; decoded frame count; time of the first decoded
    audio frame, s): what a player shows first and when its sound starts (edit lists applied by the demuxer)."""
    with av.open(str(path)) as c:
        frames = [(float(f.pts * f.time_base), f) for f in c.decode(video=0)]
        t0, pixels = frames[0][0], frames[0][1].to_ndarray(format="rgb24")
    with av.open(str(path)) as c:
        a = next(c.decode(audio=0))
        audio = float(a.pts * a.time_base)
    return t0, pixels, len(frames), audio


def test_bframe_mkv_copied_into_mp4_starts_with_the_source(tmp_path):
    """An MKV whose H.264 has B-frames, copied into the MP4 by `vmas generate` (debug model): the picture starts at
    the source's first frame time within one frame (here exactly), with the source's first picture (the keyframe;
    a copy decodes to the same pixels) and every frame, and the sound starts with it within one AAC frame. The
    copy used to drop the packets the Matroska demuxer gives no dts (keyframe + P frame): the picture started at
    the next keyframe, 80 ms or more late."""
    from vmas.cli import main

    src = bframe_mkv(tmp_path / "b.mkv")
    with av.open(str(src)) as c:
        pts, dts = zip(*[(p.pts, p.dts) for p in c.demux(video=0) if p.pts is not None])
    assert dts[0] is None  # the case this covers: leading packets without a dts
    assert any(b < a for a, b in zip(pts, pts[1:]))  # B-frames: presentation order differs from decode order
    assert media.mp4_video_plan(src) == "copy"
    assert main(["generate", str(src), "-o", str(tmp_path / "out"), "--model", "vmas-debug-random", "--top-k", "16",
                 "-q", "--mix", "replace"]) == 0
    t_src, pix_src, n_src, a_src = first_frames(src)
    t_out, pix_out, n_out, a_out = first_frames(tmp_path / "out" / "b.mp4")
    assert t_src == 0.0 and abs(t_out - t_src) < 1 / 25
    np.testing.assert_array_equal(pix_out, pix_src)
    assert n_out == n_src == 75
    assert abs(a_out - t_out) <= 1024 / SR and abs(a_out - a_src) <= 1024 / SR
    assert stream_duration(tmp_path / "out" / "b.mp4") == pytest.approx(3.0, abs=1e-3)
