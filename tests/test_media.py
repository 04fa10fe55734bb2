"""Media I/O on files generated here with PyAV: frame picking, timestamps, durations, audio, mux, and errors.

Each video encodes its frame index as brightness, so the decoded pixel values prove *which* source frame was
returned, not only how many.
"""
import wave
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from vmas.data import media
from vmas.errors import MediaError


def brightness(i: int) -> int:
    return 20 + 3 * i  # distinct, in range for up to 70 frames


def make_video(path, width, height, pts, time_base=Fraction(1, 1000), audio=None, sr=44100, layout="stereo",
               pix_fmt="yuv444p", frame_fn=None, options=None):
    """Video with frame ``i`` at ``pts[i] * time_base`` s and brightness ``brightness(i)`` (lossless-ish x264)."""
    with av.open(str(path), "w", options=options or {}) as c:
        v = c.add_stream("libx264", rate=25, options={"crf": "0", "preset": "ultrafast"})
        v.width, v.height, v.pix_fmt = width, height, pix_fmt  # 4:4:4 allows odd sizes
        v.time_base = v.codec_context.time_base = time_base
        a = c.add_stream("aac", rate=sr, layout=layout) if audio is not None else None
        for i, p in enumerate(pts):
            img = frame_fn(i) if frame_fn else np.full((height, width, 3), brightness(i), np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = p, time_base
            for pk in v.encode(f):
                c.mux(pk)
        for pk in v.encode():
            c.mux(pk)
        if a is not None:
            chans = 2 if layout == "stereo" else 1
            for i in range(0, audio.size, 1024):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.stack([audio[i:i + 1024]] * chans)),
                                                format="fltp", layout=layout)
                fr.sample_rate, fr.pts = sr, i
                for pk in a.encode(fr):
                    c.mux(pk)
            for pk in a.encode(None):
                c.mux(pk)
    return path


def cfr_pts(n, fps):
    return [round(i * 1000 / fps) for i in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    sr = 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(2.5 * sr)) / sr)).astype(np.float32)
    out = {
        # 97x61, 24 fps, 60 frames = 2.5 s, stereo AAC 440 Hz
        "odd": make_video(d / "odd.mp4", 97, 61, [i for i in range(60)], Fraction(1, 24), audio=tone, sr=sr),
        # variable frame rate: hand-chosen pts in ms
        "vfr": make_video(d / "vfr.mp4", 64, 48, [0, 40, 80, 200, 210, 220, 500, 540, 1000]),
        # portrait 48x96: top quarter red, middle half green, bottom quarter blue; 1 s at 24 fps, no audio
        "portrait": make_video(d / "portrait.mp4", 48, 96, list(range(24)), Fraction(1, 24), frame_fn=lambda i: (
            np.concatenate([np.full((24, 48, 3), (255, 0, 0)), np.full((48, 48, 3), (0, 255, 0)),
                            np.full((24, 48, 3), (0, 0, 255))]).astype(np.uint8))),
        # 25 fps, 50 frames, yuv420p even size: the default 9.6 fps path
        "pal": make_video(d / "pal.mp4", 80, 60, list(range(50)), Fraction(1, 25), pix_fmt="yuv420p"),
    }
    text = d / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    out["text"] = text
    (d / "empty.mp4").write_bytes(b"")
    out["empty"] = d / "empty.mp4"
    for name, flags in [("trunc_end", {}), ("trunc_fast", {"movflags": "faststart"})]:
        full = make_video(d / f"{name}_full.mp4", 64, 48, list(range(48)), Fraction(1, 24),
                          frame_fn=lambda i: np.random.default_rng(i).integers(0, 255, (48, 64, 3), np.uint8),
                          options=flags)
        data = full.read_bytes()
        (d / f"{name}.mp4").write_bytes(data[: len(data) // 2])
        out[name] = d / f"{name}.mp4"
    # audio only (m4a) and a video stream that holds no frames (mkv keeps the empty track)
    with av.open(str(d / "audio.m4a"), "w") as c:
        a = c.add_stream("aac", rate=32000, layout="mono")
        for i in range(0, 32000, 1024):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 32000, i
            for pk in a.encode(fr):
                c.mux(pk)
        for pk in a.encode(None):
            c.mux(pk)
    out["audio_only"] = d / "audio.m4a"
    with av.open(str(d / "zero.mkv"), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        a = c.add_stream("aac", rate=32000, layout="mono")
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate, fr.pts = 32000, 0
        for pk in list(a.encode(fr)) + list(a.encode(None)):
            c.mux(pk)
    out["zero"] = d / "zero.mkv"
    out["dir"] = d
    return out


# ---------------------------------------------------------------------------------------------------- probe
def test_probe_odd_size(files):
    info = media.probe_video(files["odd"])
    assert (info.width, info.height, info.num_frames, info.has_audio) == (97, 61, 60, True)
    assert info.duration == pytest.approx(2.5, abs=1e-4)
    assert info.fps == pytest.approx(24.0, abs=1e-3)


def test_probe_vfr_duration_is_last_pts_plus_median_interval(files):
    info = media.probe_video(files["vfr"])
    # intervals .04 .04 .12 .01 .01 .28 .04 .46 -> median .04; last frame at 1.0 s
    assert info.num_frames == 9 and not info.has_audio
    assert info.duration == pytest.approx(1.04, abs=1e-4)


# --------------------------------------------------------------------------------------------------- frames
def test_nearest_indices_by_hand():
    times = np.array([0.0, 0.1, 0.5, 0.6])
    got = media.nearest_indices(times, np.array([-1.0, 0.04, 0.05, 0.06, 0.3, 0.31, 0.58, 9.0]))
    assert got.tolist() == [0, 0, 0, 1, 1, 2, 3, 3]  # 0.05 and 0.3 are ties -> earlier frame


def test_cfr_frames_timestamps_and_pixels(files):
    # 24 fps source read at 10 fps: target j/10 s -> nearest source frame round(2.4 j) (never a tie)
    frames, ts, info = media.read_video_frames(files["odd"], fps=10.0, size=None, start=0.3, duration=2.0)
    expected = np.round(2.4 * np.arange(20) + 0.3 * 24).astype(int)
    assert frames.shape == (20, 61, 97, 3) and frames.dtype == torch.uint8
    np.testing.assert_allclose(ts, expected / 24, atol=1e-5)
    got = frames.float().mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(got, [brightness(k) for k in expected], atol=2.0)
    assert info.duration == pytest.approx(2.5, abs=1e-4)


def test_default_rate_count_and_resize(files):
    frames, ts, _ = media.read_video_frames(files["pal"], size=32, duration=2.0)  # 9.6 fps default
    assert frames.shape == (round(2.0 * 9.6), 32, 32, 3)  # 19 frames
    expected = np.round(np.arange(19) / 9.6 * 25).astype(int)  # 25/9.6 = 2.604..: no ties before 2.5 s
    np.testing.assert_allclose(ts, expected / 25, atol=1e-5)
    # 4:2:0 with B-frames and seeks: the pixels still say which frame came back
    np.testing.assert_allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), [brightness(k) for k in expected], atol=2)
    late, ts2, _ = media.read_video_frames(files["pal"], size=32, start=1.32, duration=0.5)  # mid-GOP start
    expected2 = np.round((1.32 + np.arange(5) / 9.6) * 25).astype(int)
    np.testing.assert_allclose(ts2, expected2 / 25, atol=1e-5)
    np.testing.assert_allclose(late.float().mean(dim=(1, 2, 3)).numpy(), [brightness(k) for k in expected2], atol=2)


def test_vfr_picks_nearest_real_timestamp(files):
    frames, ts, _ = media.read_video_frames(files["vfr"], fps=10.0, size=None, duration=1.0)
    # frames at 0 .04 .08 .2 .21 .22 .5 .54 1.0; targets 0 .1 ... .9 (hand-picked nearest)
    expected = [0, 2, 3, 5, 6, 6, 7, 7, 8, 8]
    pts = np.array([0, 40, 80, 200, 210, 220, 500, 540, 1000]) / 1000
    np.testing.assert_allclose(ts, pts[expected], atol=1e-5)
    np.testing.assert_allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), [brightness(k) for k in expected],
                               atol=2.0)


def test_short_video_is_padded_with_last_frame(files):
    frames, ts, info = media.read_video_frames(files["portrait"], fps=10.0, size=16, duration=3.0)
    assert frames.shape == (30, 16, 16, 3)
    assert info.duration == pytest.approx(1.0, abs=1e-4)
    # targets >= 0.98 s are nearest to the last frame (23/24 = 0.9583)
    assert np.allclose(ts[10:], 23 / 24, atol=1e-5)
    assert torch.equal(frames[10], frames[-1])


def test_portrait_center_crop_keeps_the_middle(files):
    frames, _, _ = media.read_video_frames(files["portrait"], fps=4.0, size=32, duration=1.0)
    # 48x96 -> short side 32 -> 32x64 -> central 32 rows = the green middle half
    assert frames.shape == (4, 32, 32, 3)
    mean = frames.float().mean(dim=(0, 1, 2))
    assert mean[1] > 240 and mean[0] < 15 and mean[2] < 15


def test_landscape_resize_short_side(files):
    frames, _, _ = media.read_video_frames(files["odd"], fps=2.0, size=24, duration=1.0)
    assert frames.shape == (2, 24, 24, 3)
    # content is flat per frame: resizing must keep the brightness of frames 0 and 12
    np.testing.assert_allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), [brightness(0), brightness(12)], atol=2)


def test_normalize_frames_hand_values():
    x = torch.zeros(2, 3, 4, 5, 3, dtype=torch.uint8)  # [B, T, H, W, 3]
    x[1, 2, 3, 4] = torch.tensor([255, 0, 51], dtype=torch.uint8)
    y = media.normalize_frames(x)
    assert y.shape == (2, 3, 3, 4, 5) and y.dtype == torch.float32
    assert y[1, 0, 2, 3, 4].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    assert y[1, 1, 2, 3, 4].item() == pytest.approx(-0.456 / 0.224, rel=1e-6)
    assert y[1, 2, 2, 3, 4].item() == pytest.approx((0.2 - 0.406) / 0.225, rel=1e-5)
    assert y[0, 0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229, rel=1e-6)
    assert media.normalize_frames(x[0]).shape == (1, 3, 3, 4, 5)


# ---------------------------------------------------------------------------------------------------- audio
def test_read_audio_from_video_downmix_resample(files):
    wav = media.read_audio(files["odd"], sr=32000)
    assert wav.dtype == torch.float32 and wav.shape == (80000,)  # 2.5 s at 32 kHz, codec padding trimmed
    mid = wav[8000:72000].numpy()
    assert np.abs(mid).max() == pytest.approx(0.5, abs=0.03)  # mean of two equal channels, not a -3 dB sum
    spec = np.abs(np.fft.rfft(mid))
    assert np.argmax(spec) * 32000 / mid.size == pytest.approx(440, abs=1.0)


def test_read_audio_window_matches_slice(files, tmp_path):
    sr = 16000
    x = np.random.default_rng(0).uniform(-0.8, 0.8, 3 * sr).astype(np.float32)
    path = media.write_wav(tmp_path / "x.wav", x, sr)
    win = media.read_audio(path, sr=sr, start=1.25, duration=0.5).numpy()
    np.testing.assert_allclose(win, x[20000:28000], atol=2.0 / 32768)  # int16 write (x32767) / read (/32768)
    # windows past the end are zero-padded to the requested length
    tail = media.read_audio(path, sr=sr, start=2.75, duration=0.5).numpy()
    assert tail.shape == (8000,) and np.all(tail[4000:] == 0)
    np.testing.assert_allclose(tail[:4000], x[44000:], atol=2.0 / 32768)  # int16 write (x32767) / read (/32768)
    # resampling 16k -> 32k doubles the length, keeps a tone's frequency
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(sr) / sr)
    up = media.read_audio(media.write_wav(tmp_path / "t.wav", tone, sr), sr=32000).numpy()
    assert up.shape == (32000,)
    assert np.argmax(np.abs(np.fft.rfft(up))) == pytest.approx(1000, abs=1)


def test_missing_audio(files):
    with pytest.raises(MediaError, match="portrait.mp4: no audio stream"):
        media.read_audio(files["portrait"])
    z = media.read_audio(files["portrait"], sr=8000, allow_missing=True)
    assert z.shape == (8000,) and z.abs().sum() == 0  # video is 1.0 s
    assert media.read_audio(files["portrait"], sr=8000, duration=0.25, allow_missing=True).shape == (2000,)


def test_write_wav_round_trip(tmp_path):
    x = torch.tensor([0.0, 0.5, -0.5, 1.5, -2.0])
    path = media.write_wav(tmp_path / "sub" / "a.wav", x, 8000)
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 8000, 5)
        data = np.frombuffer(f.readframes(5), "<i2")
    assert data.tolist() == [0, 16384, -16384, 32767, -32767]  # round(0.5*32767) = 16384; clipped at +-1


# ------------------------------------------------------------------------------------------------------ mux
def _packets(path):
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]


def test_mux_copies_video_and_matches_duration(files, tmp_path):
    sr = 32000
    wav = 0.3 * torch.sin(2 * torch.pi * 330 * torch.arange(int(0.6 * sr)) / sr)  # shorter than the 1.0 s video
    out = media.mux_audio(files["portrait"], wav, tmp_path / "o.mp4", sr=sr)
    assert _packets(out) == _packets(files["portrait"])  # stream copy: identical compressed frames
    info = media.probe_video(out)
    assert info.has_audio and info.num_frames == 24
    assert media.audio_duration(out) == pytest.approx(1.0, abs=1e-3)
    back = media.read_audio(out, sr=sr).numpy()
    assert back.shape == (32000,)
    assert np.abs(back[2000:17000]).max() == pytest.approx(0.3, abs=0.03) and np.abs(back[21000:]).max() < 0.01


def test_mux_from_wav_path_trims_long_audio(files, tmp_path):
    wav_path = media.write_wav(tmp_path / "long.wav", np.full(5 * 16000, 0.1, np.float32), 16000)
    out = media.mux_audio(files["odd"], wav_path, tmp_path / "o.mp4")  # replaces the existing 440 Hz track
    assert media.audio_duration(out) == pytest.approx(2.5, abs=1e-3)
    assert _packets(out) == _packets(files["odd"])
    assert not (tmp_path / "o.tmp.mp4").exists()


# --------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("key, problem", [
    ("missing", "no such file"),
    ("text", "not a readable media file"),
    ("empty", "empty"),
    ("audio_only", "no video stream"),
    ("zero", "zero frames"),
    ("trunc_end", "not a readable media file"),
    ("trunc_fast", "truncated or corrupt"),
])
def test_bad_input_raises_one_line_media_error(files, key, problem):
    path = files["dir"] / "missing.mp4" if key == "missing" else files[key]
    for call in (media.probe_video, lambda p: media.read_video_frames(p, size=16, duration=1.0)):
        with pytest.raises(MediaError) as info:
            call(path)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(str(path)) and problem in msg
        assert ".cc:" not in msg  # no decord C++ trace


def test_bad_arguments(files):
    with pytest.raises(MediaError, match="must be positive"):
        media.read_video_frames(files["pal"], fps=0)
    with pytest.raises(MediaError, match="needs sr="):
        media.mux_audio(files["pal"], np.zeros(10), files["dir"] / "x.mp4")


def test_pyav_fallback_matches_decord(files):
    """The fallback (used where decord mis-sizes frames, e.g. the 48x96 portrait above) returns the same frames."""
    frames, ts, _ = media.read_video_frames(files["odd"], fps=4.0, size=None, start=1.0, duration=1.0)
    fallback = media._frames_av(files["odd"], np.unique(ts), "test")
    assert fallback.shape == frames.shape
    assert (fallback.float() - frames.float()).abs().mean() < 1.5  # same frames; colour conversion may round
    np.testing.assert_allclose(fallback.float().mean(dim=(1, 2, 3)).numpy(),
                               [brightness(k) for k in (24, 30, 36, 42)], atol=2.0)


def test_mpegts_offset_clock_keeps_audio_and_video_in_sync(tmp_path):
    """MPEG-TS starts its clock late (video here at 0.08 s, audio priming earlier): frame times and audio are both
    measured from the video's first pts, so a click written at 1.0 s is heard at 1.0 s next to frame 25."""
    sr, path = 32000, tmp_path / "clock.ts"
    with av.open(str(path), "w", format="mpegts") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        a = c.add_stream("aac", rate=sr, layout="mono")
        for i in range(50):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), brightness(i), np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        x = np.zeros(2 * sr, np.float32)
        x[sr:sr + 64] = 0.9  # click at exactly 1.0 s
        for i in range(0, x.size, 1024):
            fr = av.AudioFrame.from_ndarray(x[None, i:i + 1024].copy(), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = sr, i
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    with av.open(str(path)) as c:
        assert c.streams.video[0].start_time > 0  # the case under test: a clock that does not start at 0
    frames, ts, info = media.read_video_frames(path, fps=5.0, size=None, duration=2.0)
    assert info.num_frames == 50 and info.duration == pytest.approx(2.0, abs=1e-4)
    np.testing.assert_allclose(ts, np.arange(10) / 5, atol=1e-5)
    np.testing.assert_allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), [brightness(5 * j) for j in range(10)],
                               atol=2.0)
    wav = media.read_audio(path, sr=sr).numpy()
    assert np.argmax(np.abs(wav)) / sr == pytest.approx(1.0, abs=0.003)
    win = media.read_audio(path, sr=sr, start=0.5, duration=1.0).numpy()
    assert win.shape == (sr,) and np.argmax(np.abs(win)) / sr == pytest.approx(0.5, abs=0.003)


@pytest.mark.parametrize("rotation, k", [(90, 1), (-90, 3), (180, 2)])
def test_display_rotation_is_applied(tmp_path, rotation, k):
    """Phone videos are stored landscape with a display rotation: frames come back as displayed (np.rot90 is
    counterclockwise, FFmpeg's convention), in decord and in the PyAV fallback alike."""
    img = np.zeros((32, 64, 3), np.uint8)
    img[:16, :32] = 250
    img[:8, :8] = 120
    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25, options={"crf": "0"})
        v.width, v.height, v.pix_fmt = 64, 32, "yuv444p"
        v.set_display_rotation(rotation)
        for _ in range(5):
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    shown = np.rot90(img, k)
    info = media.probe_video(path)
    assert (info.width, info.height) == (shown.shape[1], shown.shape[0])
    frames, ts, _ = media.read_video_frames(path, fps=25.0, size=None, duration=0.2)
    assert frames.shape == (5, *shown.shape)
    assert np.abs(frames[0].numpy().astype(int) - shown).mean() < 2
    assert media._header(path)[3] == k * 90
    fallback = media._frames_av(path, np.unique(ts), "test", rotation=k * 90)
    assert np.abs(fallback[0].numpy().astype(int) - shown).mean() < 2


def test_resize_center_crop_matches_float_reference():
    x = torch.randint(0, 256, (3, 61, 97, 3), dtype=torch.uint8)  # landscape: crop columns 18..79
    ref = torch.nn.functional.interpolate(x[:, :, 18:79].permute(0, 3, 1, 2).float(), size=(24, 24),
                                          mode="bilinear", antialias=True, align_corners=False)
    ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1)
    got = media.resize_center_crop(x, 24)
    assert got.shape == (3, 24, 24, 3) and got.dtype == torch.uint8
    assert (got.float() - ref).abs().max() <= 1
    assert torch.equal(media.resize_center_crop(x[:, :, :61], 61), x[:, :, :61])  # already square and sized
