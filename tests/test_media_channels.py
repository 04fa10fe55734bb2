"""The video's own channels through `vmas generate` (issue 35): a stereo recording stays stereo with its left-right
difference, a 5.1 AC3 soundtrack comes back as 5.1 AAC with the music in L/R/C only, and any other layout is
downmixed to stereo with a note. Streams written here with PyAV (tests build their own media)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from vmas import mixing as M
from vmas.data import media

SR = 48000


def _tones(names, seconds: float, sr: int = SR) -> np.ndarray:
    """A different modulated tone in every channel: float32 [C, N]."""
    t = np.arange(int(seconds * sr)) / sr
    freqs = [220, 330, 440, 55, 660, 880, 990, 1100]
    return np.stack([0.1 * np.sin(2 * np.pi * freqs[i] * t) * (1 + 0.5 * np.sin(2 * np.pi * (0.5 + i) * t))
                     for i in range(len(names))]).astype(np.float32)


def write_video(path, layout: str, codec: str, seconds: float = 4.0, fmt=None, sr: int = SR) -> np.ndarray:
    """A 25 fps 48x32 H.264 video with ``codec`` audio in ``layout`` (each channel its own tone); returns the
    channels written, float32 [C, N]."""
    import av

    names = [c.name for c in av.AudioLayout(layout).channels]
    chans = _tones(names, seconds, sr)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream("libx264", rate=25, options={"bf": "0"})  # no B-frames: no reordering delay in MKV
        vs.width, vs.height, vs.pix_fmt = 48, 32, "yuv420p"
        a = out.add_stream(codec, rate=sr, layout=layout)
        size, k = (1536 if codec == "ac3" else 1024), 0
        for i in range(0, chans.shape[1], size):
            while k / 25 <= i / sr:  # interleaved: the frames up to this audio frame's time first
                frame = av.VideoFrame.from_ndarray((rng.random((32, 48, 3)) * 255).astype(np.uint8), format="rgb24")
                frame.pts, frame.time_base = k, Fraction(1, 25)
                for p in vs.encode(frame):
                    out.mux(p)
                k += 1
            piece = np.ascontiguousarray(chans[:, i:i + size])
            piece = np.pad(piece, ((0, 0), (0, size - piece.shape[1])))
            af = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            af.sample_rate, af.pts = sr, i
            for p in a.encode(af):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        for p in a.encode(None):
            out.mux(p)
    return chans


def _generate(video, out, *extra):
    from vmas.cli import main

    assert main(["generate", str(video), "-o", str(out), "--model", "vmas-debug-random", "--top-k", "16", "-q",
                 *extra]) == 0
    return out / f"{video.stem}.mp4"


def _channels(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return s.codec_context.name, [ch.name for ch in s.layout.channels]


@pytest.mark.slow
def test_stereo_recording_keeps_its_left_right_difference(tmp_path):
    """Different tones left and right: the finished mp4 is stereo AAC, the music is centred so L - R is the
    original's L - R times one gain (the loudness normalisation). Through AAC at 192 kbit/s it holds to the codec's
    precision, measured here as the residual after that gain: <= -30 dB relative to L - R (AAC's noise floor at
    this rate is ~-40 dB on tones; the music, had it leaked into L - R, would sit near 0 dB)."""
    src = tmp_path / "stereo.mp4"
    write_video(src, "stereo", "aac")
    own = media.read_audio_track(src, SR).track.array().astype(np.float64)  # [2, N] as the generator reads it
    mp4 = _generate(src, tmp_path / "out")
    assert _channels(mp4) == ("aac", ["FL", "FR"])
    got = media.read_audio_track(mp4, SR).track.array().astype(np.float64)
    n = min(own.shape[1], got.shape[1])
    d_src, d_out = own[0, :n] - own[1, :n], got[0, :n] - got[1, :n]
    gain = float(d_out @ d_src / (d_src @ d_src))
    residual = 10 * np.log10(np.sum((d_out - gain * d_src) ** 2) / np.sum((gain * d_src) ** 2))
    music = got[0, :n] + got[1, :n] - gain * (own[0, :n] + own[1, :n])  # what was added in the centre
    print(f"L-R gain {20 * np.log10(gain):+.2f} dB, residual {residual:.1f} dB, music "
          f"{10 * np.log10(np.mean(music ** 2) / np.mean((gain * d_src) ** 2)):.1f} dB re L-R")
    assert residual < -30.0
    assert np.mean(music ** 2) > 1e-3 * np.mean((gain * d_src) ** 2)  # the music is there, in the centre
    level = M.integrated_loudness(got, SR)  # stereo: BS.1770 weights 1, 1
    assert abs(level + 14.0) <= 0.5 and M.true_peak(got, SR) <= -1.0


@pytest.mark.slow
def test_ac3_5_1_comes_back_as_5_1_with_music_in_front_only(tmp_path):
    """A 5.1(side) AC3 soundtrack in an MKV: the mp4 holds 5.1 AAC (AAC's one 5.1 layout: the side pair as its
    surround pair, documented in media.AAC_LAYOUTS); LFE and surrounds hold the original's channels only (the
    music adds nothing there: they match the source channel times one gain, -30 dB residual), the fronts carry
    the music; loudness (BS.1770 5.1 weights) and every channel's true peak hold."""
    src = tmp_path / "surround.mkv"
    write_video(src, "5.1(side)", "ac3", fmt="matroska")
    own = media.read_audio_track(src, SR)
    assert own.layout == ("FL", "FR", "FC", "LFE", "SL", "SR") and not own.note
    orig = own.track.array().astype(np.float64)
    mp4 = _generate(src, tmp_path / "out")
    codec, names = _channels(mp4)
    assert codec == "aac" and names == ["FL", "FR", "FC", "LFE", "BL", "BR"]
    got = media.read_audio_track(mp4, SR).track.array().astype(np.float64)
    n = min(orig.shape[1], got.shape[1])
    gains, residuals = [], []
    for c in range(6):
        g = float(got[c, :n] @ orig[c, :n] / (orig[c, :n] @ orig[c, :n]))
        r = got[c, :n] - g * orig[c, :n]
        gains.append(g)
        residuals.append(10 * np.log10(np.sum(r ** 2) / np.sum((g * orig[c, :n]) ** 2)))
    print("gains", np.round(gains, 3), "residual dB", np.round(residuals, 1))
    assert max(residuals[3:]) < -30.0  # LFE, surrounds: the original alone
    assert min(residuals[:3]) > -25.0  # fronts: the music is in them
    assert np.ptp(gains[3:]) < 0.02 * np.mean(gains[3:])  # one gain for every channel
    level = M.integrated_loudness(got, SR, M.loudness_weights(tuple(names)))
    assert abs(level + 14.0) <= 0.5 and M.true_peak(got, SR) <= -1.0


def test_layout_aac_cannot_carry_is_downmixed_to_stereo_with_a_note(tmp_path):
    """A 4.0 soundtrack (not mono, stereo or 5.1): read for the MP4, it comes back stereo by the BS.775 matrix,
    with one line saying so; a 5.1(side) one is kept."""
    src = tmp_path / "quad.mkv"
    chans = write_video(src, "4.0", "ac3", seconds=1.0, fmt="matroska")  # FL FR FC BC
    kept = media.read_audio_track(src, SR)
    assert kept.layout == ("FL", "FR", "FC", "BC") and not kept.note
    down = media.read_audio_track(src, SR, layouts=media.AAC_LAYOUTS)
    assert down.layout == ("FL", "FR") and "downmixed to stereo" in down.note
    expect = M.stereo_downmix(kept.layout) @ kept.track.array()
    np.testing.assert_allclose(down.track.array(), expect, atol=1e-6)
    assert chans.shape[0] == 4
