"""Real-world inputs (issue 18, media half): legacy codecs MP4 does not take, AVIs whose timestamps lie, damaged
audio packets, multi-channel downmix, extreme frame sizes, odd paths, and a folder of good and broken files.

Every file is written here with PyAV (FFmpeg's encoders and muxers). Frames encode their index as brightness so
the pixels prove *which* frame came back; audio is a tone so lengths and energies can be computed by hand.
"""
import logging
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vmas.cli import main
from vmas.config import load_config
from vmas.data import media
from vmas.errors import MediaError
from vmas.hub import load_pretrained

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXAMPLE = Path(media.__file__).resolve().parent.parent / "assets" / "example.mp4"


def level(i: int) -> int:
    return 16 + 4 * i  # brightness of frame i (distinct for up to 60 frames)


def make(path, vcodec="libx264", n=50, fps=25, w=64, h=48, pix=None, bframes=None, vopts=None, tone=None, sr=44100,
         acodec="aac", layout="stereo", channel_tones=None, fmt=None, frame_fn=None):
    """Video of ``n`` frames (frame i flat at ``level(i)``) at ``fps``; audio: ``tone`` [N] on every channel, or
    ``channel_tones`` [C, N] (one row per channel of ``layout``)."""
    with av.open(str(path), "w", format=fmt) as c:
        v = c.add_stream(vcodec, rate=fps, options=vopts or {})
        v.width, v.height = w, h
        if pix:
            v.pix_fmt = pix
        if bframes is not None:
            v.codec_context.max_b_frames = bframes
        a = None
        if tone is not None or channel_tones is not None:
            a = c.add_stream(acodec, rate=sr, layout=layout)
            if acodec in ("ac3", "eac3"):
                a.bit_rate = 448_000 if layout == "5.1" else 192_000
        for i in range(n):
            img = frame_fn(i) if frame_fn else np.full((h, w, 3), level(i % 60), np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            x = channel_tones if channel_tones is not None else np.stack([tone] * a.codec_context.layout.nb_channels)
            fs = a.codec_context.frame_size or 1024
            for i in range(0, x.shape[1], fs):
                blk = x[:, i:i + fs]
                blk = np.pad(blk, ((0, 0), (0, fs - blk.shape[1])))
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(blk, np.float32), format="fltp", layout=layout)
                fr.sample_rate, fr.pts = sr, i
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return Path(path)


def sine(freq, seconds, sr=44100, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * sr)) / sr)).astype(np.float32)


def decoded_levels(path):
    """Brightness index of every frame FFmpeg decodes, in display order (the reference for our reader)."""
    with av.open(str(path)) as c:
        return np.array([(fr.to_ndarray(format="rgb24").astype(float).mean() - 16) / 4
                         for fr in c.decode(c.streams.video[0])])


def video_stream_duration(path):
    """Duration of the first video stream as the container states it (header), seconds."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.duration * s.time_base)


def corrupt_audio_packets(src, dst, which):
    """Copy of ``src`` with the first 8 bytes (the sync word / frame header) of audio packets ``which`` (None: all)
    zeroed."""
    data = bytearray(Path(src).read_bytes())
    with av.open(str(src)) as c:
        spans = [(p.pos, p.size) for p in c.demux(c.streams.audio[0]) if p.size]
    for k in (range(len(spans)) if which is None else which):
        pos, _ = spans[k]
        data[pos:pos + 8] = bytes(8)
    Path(dst).write_bytes(bytes(data))
    return Path(dst), len(spans)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    d = tmp_path_factory.mktemp("legacy")
    tone = sine(440, 2.0)
    return {
        "msmpeg4.avi": make(d / "msmpeg4.avi", "msmpeg4", tone=tone, acodec="mp3", vopts={"qscale": "2"}),
        "mjpeg.avi": make(d / "mjpeg.avi", "mjpeg", pix="yuvj444p", tone=tone, acodec="ac3"),
        "cinepak.mov": make(d / "cinepak.mov", "cinepak", pix="rgb24", tone=tone),
        "mpeg4.avi": make(d / "mpeg4.avi", "mpeg4", tone=tone, acodec="ac3", vopts={"qscale": "2"}),
        # H.264 with B-frames in an AVI: decord's first frame times come back as -3.7e17 s
        "bframes.avi": make(d / "bframes.avi", "libx264", pix="yuv444p", bframes=2, vopts={"crf": "0"},
                            tone=tone, acodec="mp3"),
        "mpeg4.mov": make(d / "mpeg4.mov", "mpeg4", tone=tone, vopts={"qscale": "2"}),
    }


# ------------------------------------------------------------------------------------ output always written
@pytest.mark.parametrize("name, plan", [("msmpeg4.avi", "h264"), ("mjpeg.avi", "h264"), ("cinepak.mov", "h264"),
                                        ("mpeg4.avi", "h264"), ("bframes.avi", "h264"), ("mpeg4.mov", "copy")])
def test_mux_writes_every_codec_with_the_source_timing(legacy, tmp_path, name, plan):
    src = legacy[name]
    sr = 32000
    assert media.mp4_video_plan(src) == plan
    out = media.mux_audio(src, sine(330, 1.0, sr), tmp_path / "o.mp4", sr=sr)  # shorter than the video: padded
    info, back = media.probe_video(src), media.probe_video(out)
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == ("h264" if plan == "h264" else "mpeg4")
    assert back.num_frames == info.num_frames == 50
    # the duration is the container's packets' (2.04 s where PyAV's AVI muxer left a frame slot empty beside MP3;
    # the AVI header of the B-frame file counts one slot more than its 50 frames), the output's video stream says
    # the same, and its audio is within one AAC frame of it
    expected = info.duration
    assert abs(expected - video_stream_duration(src)) <= 1 / 25 + 1e-6
    assert back.duration == pytest.approx(expected, abs=1e-6)
    assert video_stream_duration(out) == pytest.approx(expected, abs=1e-3)
    assert abs(media.audio_duration(out) - expected) <= 1024 / sr
    # same frames at the same times: FFmpeg's display-order decode of source and output agree frame by frame
    ref, got = decoded_levels(src), decoded_levels(out)
    assert len(got) == len(ref) and np.abs(got - ref).max() < 1.0
    if plan == "copy":
        with av.open(str(src)) as a, av.open(str(out)) as b:
            assert [bytes(p) for p in a.demux(a.streams.video[0]) if p.size] == \
                   [bytes(p) for p in b.demux(b.streams.video[0]) if p.size]


def test_avi_with_unreliable_first_timestamps(legacy):
    """decord's times for this AVI start at -3.7e17 s; the container's say 50 frames over 2.0 s. Frames are read in
    decode order, so frame k is the k-th frame FFmpeg shows (lossless here: exact levels)."""
    import decord

    src = legacy["bframes.avi"]
    ts = decord.VideoReader(str(src)).get_frame_timestamp(np.arange(50))[:, 0]
    assert ts.min() < -1e10  # the case under test
    info = media.probe_video(src)
    assert (info.num_frames, info.duration) == (50, pytest.approx(2.0, abs=1e-9))
    frames, times, _ = media.read_video_frames(src, fps=10.0, size=None, start=0.5, duration=1.0)
    expected = np.ceil((0.5 + np.arange(10) / 10) * 25 - 0.5 - 1e-9).astype(int)  # ties (12.5) go to the earlier
    np.testing.assert_allclose(times, expected / 25, atol=1e-9)
    np.testing.assert_allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), [level(k) for k in expected], atol=1.0)
    # a later window, then an earlier one (the sequential reader restarts)
    late, _, _ = media.read_video_frames(src, fps=5.0, size=8, start=1.6, duration=0.4)
    early, _, _ = media.read_video_frames(src, fps=5.0, size=8, start=0.0, duration=0.4)
    np.testing.assert_allclose(late.float().mean(dim=(1, 2, 3)).numpy(), [level(40), level(45)], atol=1.0)
    np.testing.assert_allclose(early.float().mean(dim=(1, 2, 3)).numpy(), [level(0), level(5)], atol=1.0)


def test_long_legacy_video_keeps_its_length(tmp_path):
    """Over a minute of MS-MPEG4 + MP3 in an AVI (16x16, 5 fps: cheap): re-encoded, same frame count, audio of the
    video stream's length within one AAC frame."""
    seconds, fps, sr = 61.0, 5, 32000
    src = make(tmp_path / "long.avi", "msmpeg4", n=round(seconds * fps), fps=fps, w=16, h=16,
               tone=sine(220, seconds, sr=sr), sr=sr, acodec="mp3", layout="mono")
    info = media.probe_video(src)
    assert info.num_frames == 305 and info.duration == pytest.approx(seconds, abs=1e-6)
    out = media.mux_audio(src, np.zeros(10, np.float32), tmp_path / "long.mp4", sr=sr)
    assert media.probe_video(out).num_frames == 305
    assert video_stream_duration(out) == pytest.approx(seconds, abs=1e-3)
    assert abs(media.audio_duration(out) - seconds) <= 1024 / sr
    wav = media.read_audio(src, sr=sr)  # the MP3 track: AVI states no audio duration to trim the encoder's
    assert 0 <= wav.numel() / sr - seconds <= 2 * 1152 / sr  # delay and last-frame padding by (< 2 MP3 frames)


# ------------------------------------------------------------------------------------------- audio decoding
@pytest.mark.parametrize("acodec, frame", [("ac3", 1536), ("mp3", 1152)])
def test_damaged_audio_packets_are_skipped_not_the_stream(legacy, tmp_path, caplog, acodec, frame):
    """Packets 0, 5, 6 and 20 lose their header (the first packet included: that used to reject the whole stream).
    The rest decodes, the damaged time is silent, what follows stays in place, and the log counts the skips."""
    sr = 44100
    clean_path = legacy["mjpeg.avi" if acodec == "ac3" else "msmpeg4.avi"]
    clean = media.read_audio(clean_path, sr=sr).numpy()
    bad, n_packets = corrupt_audio_packets(clean_path, tmp_path / f"bad_{acodec}.avi", [0, 5, 6, 20])
    with caplog.at_level(logging.WARNING, logger="vmas.data.media"):
        wav = media.read_audio(bad, sr=sr).numpy()
    msg = [r.getMessage() for r in caplog.records if "audio packets" in r.getMessage()]
    assert len(msg) == 1
    skipped, total = map(int, re.search(r"skipped (\d+) of (\d+)", msg[0]).groups())
    assert 3 <= skipped <= 6 and abs(total - n_packets) <= 6  # a damaged header can split or merge parser frames
    assert wav.shape == clean.shape  # same length: gaps are kept, not closed up
    # by hand, frame by frame: a damaged packet silences its own frame and at most two more (AC3's overlapping
    # MDCT blocks, MP3's bit reservoir, a parser that merges the damaged frame into its neighbour); every other
    # frame decodes as in the clean file, so the energy is the clean energy less the silent frames' share
    blocks = wav.size // frame
    e_bad = (wav[:blocks * frame].reshape(blocks, frame) ** 2).mean(1)
    e_clean = (clean[:blocks * frame].reshape(blocks, frame) ** 2).mean(1)
    dead = int(((e_bad < 0.01) & (e_clean > 0.1)).sum())
    assert 4 <= dead <= 3 * 4
    assert np.mean(wav ** 2) == pytest.approx(np.mean(clean ** 2) * (1 - dead / blocks), abs=0.125 * 1.5 / blocks)
    # in sync after the gaps: the last second matches the clean decode sample for sample (lossy codec: 2e-2)
    np.testing.assert_allclose(wav[-sr:], clean[-sr:], atol=2e-2)


def test_audio_that_never_decodes_is_one_line(legacy, tmp_path):
    bad, n = corrupt_audio_packets(legacy["mjpeg.avi"], tmp_path / "mute.avi", None)
    with pytest.raises(MediaError) as err:
        media.read_audio(bad)
    assert str(err.value).startswith(f"{bad}: cannot decode the audio stream") and "\n" not in str(err.value)


@pytest.mark.parametrize("acodec", ["ac3", "eac3"])
def test_surround_downmix_by_hand(tmp_path, acodec):
    """5.1 with one tone per channel: mono = 0.5 FL + 0.5 FR + 0.7071 FC + 0.3536 (BL + BR), LFE dropped
    (ITU-R BS.775 stereo downmix, then the mean of L and R); measured tone by tone by least squares."""
    sr, seconds = 48000, 1.0
    freqs = {"FL": 300, "FR": 500, "FC": 700, "LFE": 60, "BL": 1100, "BR": 1300}
    rows = np.stack([sine(f, seconds, sr, amp=0.2) for f in freqs.values()])
    path = make(tmp_path / "s.mkv", n=5, channel_tones=rows, sr=sr, acodec=acodec, layout="5.1")
    wav = media.read_audio(path, sr=sr).numpy()
    seg = wav[4800:43200]  # away from the codec's start and end
    t = np.arange(4800, 43200) / sr
    basis = np.concatenate([[np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)] for f in freqs.values()]).T
    coef = np.linalg.lstsq(basis, seg, rcond=None)[0].reshape(-1, 2)
    amp = np.hypot(coef[:, 0], coef[:, 1]) / 0.2  # gain of each channel into the mono mix
    expected = [0.5, 0.5, 0.7071, 0.0, 0.3536, 0.3536]
    np.testing.assert_allclose(amp, expected, atol=0.03)
    assert media.downmix_weights(["FL", "FR"]).tolist() == [0.5, 0.5]  # stereo: the plain mean, as before
    assert media.downmix_weights(["FC"]).tolist() == [1.0]


# --------------------------------------------------------------------------------------------- frame sizes
def test_one_pixel_video(tmp_path):
    src = make(tmp_path / "dot.mkv", "libx264", n=10, w=1, h=1, pix="yuv444p", vopts={"crf": "0"})
    frames, _, info = media.read_video_frames(src, fps=5.0, size=16, duration=1.0)
    assert (info.width, info.height) == (1, 1) and frames.shape == (5, 16, 16, 3)
    # 0.4 s of video read for 1 s: frames 0 and 5, then the last one (9) repeated
    np.testing.assert_allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), [level(k) for k in (0, 5, 9, 9, 9)],
                               atol=1.0)


def test_frames_are_decoded_in_chunks_of_bounded_bytes(tmp_path, monkeypatch):
    """The reader decodes and resizes at most media.CHUNK_BYTES of source pixels at a time (one 8000x8000 frame is
    192 MB): with the budget set to two 64x48 frames here, a 7-frame window goes through in chunks of 2."""
    src = make(tmp_path / "c.mp4", n=10, fps=5)
    seen = []
    real = media.resize_center_crop
    monkeypatch.setattr(media, "resize_center_crop", lambda x, size: seen.append(x.shape[0]) or real(x, size))
    monkeypatch.setattr(media, "CHUNK_BYTES", 2 * 64 * 48 * 3)
    frames, _, _ = media.read_video_frames(src, fps=5.0, size=16, duration=1.4)
    assert seen == [2, 2, 2, 1]
    np.testing.assert_allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), [level(k) for k in range(7)], atol=1.5)


@pytest.mark.slow
def test_huge_frames_are_resized_one_at_a_time(tmp_path, monkeypatch):
    """8000x8000 (192 MB of RGB per frame; ~40 s on 2 cores, mostly encoding it): one frame at a time."""
    src = make(tmp_path / "huge.avi", "mjpeg", n=3, fps=5, w=8000, h=8000, pix="yuvj420p")
    seen = []
    real = media.resize_center_crop
    monkeypatch.setattr(media, "resize_center_crop", lambda x, size: seen.append(x.shape[0]) or real(x, size))
    frames, _, info = media.read_video_frames(src, fps=5.0, size=32, duration=0.6)
    assert (info.width, info.height) == (8000, 8000) and frames.shape == (3, 32, 32, 3)
    assert seen == [1, 1, 1]
    np.testing.assert_allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), [level(0), level(1), level(2)], atol=1.5)


# -------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return load_pretrained(None, config=load_config(CONFIGS / "debug.yaml"), random_note="debug")


def test_folder_of_good_legacy_and_broken_files(legacy, tmp_path, capsys, caplog):
    """Done means: `vmas generate DIR` writes NAME.mp4 with audio of the video's length for every decodable file
    and one `skipping X: reason` line per broken file. Decodable here: the example video, legacy codecs (MS-MPEG4,
    MJPEG, Cinepak, MPEG-4 Part 2, H.264 with B-frames in an AVI), paths with spaces and non-ASCII characters, and
    a fine picture whose audio never decodes (the music replaces it)."""
    d = tmp_path / "in put"
    d.mkdir()
    good = {"example.mp4": EXAMPLE}
    for name in ("msmpeg4.avi", "mjpeg.avi", "cinepak.mov", "bframes.avi"):
        good[name] = legacy[name]
    good["café ÷ clip.avi"] = legacy["mpeg4.avi"]
    mute, _ = corrupt_audio_packets(legacy["mjpeg.avi"], d / "mute audio.avi", None)
    for name, src in good.items():
        (d / name).write_bytes(Path(src).read_bytes())
    broken = {"truncated.avi": legacy["msmpeg4.avi"].read_bytes()[:3000], "text.mp4": b"not a video\n" * 40,
              "empty.mov": b""}
    for name, data in broken.items():
        (d / name).write_bytes(data)
    # a container holding a video stream with zero frames (and a second of audio)
    zero = d / "zero frames.mkv"
    with av.open(str(zero), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        a = c.add_stream("aac", rate=32000, layout="mono")
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate, fr.pts = 32000, 0
        for pk in list(a.encode(fr)) + list(a.encode(None)):
            c.mux(pk)

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):  # the CLI prints warnings through logging (pytest collects them here)
        rc = main(["generate", str(d), "-o", str(out), "--top-k", "16", "-q", "--model", "vmas-debug-random"])
    warnings = [r.getMessage() for r in caplog.records]
    captured = capsys.readouterr()
    assert rc == 1
    skips = [line for line in captured.err.splitlines() if line.startswith("skipping")]
    assert len(skips) == len(broken) + 1  # one line per broken file
    for name in [*broken, zero.name]:
        (line,) = [x for x in skips if x.startswith(f"skipping {d / name}: ")]
        assert line.count(str(d / name)) == 1 and line.count(name) == 1  # the path once, then the reason
    assert "zero frames" in [x for x in skips if zero.name in x][0]
    # every decodable file: NAME.mp4 whose audio lasts as long as its video stream (one AAC frame at 48 kHz)
    for name in [*good, mute.name]:
        mp4 = out / f"{Path(name).stem}.mp4"
        video = video_stream_duration(mp4)
        assert video == pytest.approx(media.probe_video(d / name).duration, abs=1e-3)
        assert abs(media.audio_duration(mp4) - video) <= 1024 / 48000 + 1e-6
        with av.open(str(mp4)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
    assert sorted(f.name for f in out.iterdir() if f.suffix == ".mp4") == sorted(
        f"{Path(n).stem}.mp4" for n in [*good, mute.name])  # nothing else, no temporary re-encode left behind
    assert not [f for f in out.iterdir() if f.name.startswith(".")]
    # one line says which videos were re-encoded (the example's H.264 is copied), and why
    notes = [line for line in warnings if "re-encoded to H.264" in line]
    assert len(notes) == len(good) - 1 + 1  # the five legacy files and the mute one; the example is copied
    assert not any("example.mp4" in line for line in notes)
    # the audio that never decodes: one warning, and the music replaces it
    assert any("mute audio.avi: its audio does not decode" in line for line in warnings)
    assert re.search(r"mute audio\.mp4 .*audio: replace", captured.out)


def test_long_music_is_decoded_in_chunks_that_match_one_call(pipe):
    """decode_music: up to one chunk (+ context) it is the single call it always was (bit for bit); longer music
    goes through chunks with a second of code context either side, and the seams match the single call."""
    from vmas.generate import decode_music

    codec = pipe.codec
    torch.manual_seed(0)
    codes = torch.randint(0, codec.card, (codec.n_q, round(12 * codec.frame_rate)))  # 12 s
    with torch.no_grad():
        whole = codec.decode(codes[None])[0, 0]
    assert torch.equal(decode_music(codec, codes, "cpu"), whole)
    calls = []
    real = codec.decode
    codec.decode = lambda c: calls.append(c.shape[-1]) or real(c)
    try:
        parts = decode_music(codec, codes, "cpu", chunk_seconds=4.0, context_seconds=1.0)
    finally:
        del codec.decode
    fr = codec.frame_rate
    assert calls == [round(5 * fr), round(6 * fr), round(5 * fr)]  # [0,5) [3,9) [7,12): 4 s kept + 1 s each side
    assert parts.shape == whole.shape
    assert (parts - whole).abs().max() < 1e-3 * max(1.0, whole.abs().max().item())
