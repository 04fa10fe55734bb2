"""Channels and disk-backed blocks in the finished audio (issue 35): stereo and 5.1 kept, music in the centre,
BS.1770 channel weights, true peak per channel, speech on the downmix; a mono input gives what the mono-only
chain gave (its numbers below), and tracks on disk give what arrays in memory give."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vmas import mixing as M
from vmas.errors import VmasError

SR, MUSIC_SR = 48000, 32000

# finish_audio's results on _inputs() with the mono-only chain (commit 0bdf3cd, before channels and tracks): gain,
# loudness, true peak, sums of |x| and the samples at MONO_INDEX, for three settings ("replace" with music_gain 0:
# replace no longer applies --music-gain, tests/test_mix_replace_level.py)
MONO_REFERENCE = json.loads(
    "{\"keep\": {\"n\": 144000, \"gain_db\": 6.45274029170198, \"loudness\": -14.008541545995067, \"true_peak\":"
    "-1.5444736758995445, \"abs_sum\": 23514.914067016463, \"music_abs_sum\": 6150.022217620239, \"audio\":"
    "[5.171615339349955e-05, -0.2447771579027176, -0.3996512293815613, -0.12295479327440262, -0.22657378017902374,"
    "-0.1618047058582306, 0.014570416882634163, 0.20618535578250885, 0.15309979021549225, 0.09454019367694855,"
    "-0.005482689943164587, 0.0038494013715535402, -0.2590745985507965, -0.42393067479133606, -0.1965835839509964,"
    "-0.19040361046791077, -0.08995223790407181, 0.11156398802995682, 0.25315481424331665, 0.36533740162849426,"
    "0.11088861525058746, -0.04145491495728493, 0.022878337651491165], \"music\": [-3.5698364837105645e-12,"
    "-0.011996328830718994, -0.027949651703238487, 0.0966683104634285, -0.26587846875190735, -0.15349768102169037,"
    "-0.009525950066745281, 0.002437260467559099, -0.07605507969856262, -0.037324097007513046, -0.012712337076663971,"
    "0.016899636015295982, -0.0412290133535862, -0.028147943317890167, -0.04829389974474907, -0.11618605256080627,"
    "-0.0616743378341198, -0.012881823815405369, -0.00202189851552248, -2.6996847736882046e-05, 0.0, 0.0, 0.0]},"
    "\"keep_loud12\": {\"n\": 144000, \"gain_db\": 8.265808700772666, \"loudness\": -11.998801560083475, \"true_peak\":"
    "-1.544472438173787, \"abs_sum\": 29747.790378970698, \"music_abs_sum\": 9386.221439895531, \"audio\":"
    "[6.372056668624282e-05, -0.30542227625846863, -0.5013355016708374, -0.120655357837677, -0.34017205238342285,"
    "-0.24833299219608307, 0.014913479797542095, 0.2409117966890335, 0.16437382996082306, 0.10457755625247955,"
    "-0.01081092655658722, 0.010134376585483551, -0.3323644995689392, -0.531313955783844, -0.2576218843460083,"
    "-0.27166688442230225, -0.13050787150859833, 0.1333506852388382, 0.31127238273620605, 0.450131356716156,"
    "0.13662821054458618, -0.051077477633953094, 0.028188884258270264], \"music\": [-5.537347923939562e-12,"
    "-0.0186080913990736, -0.04335406795144081, 0.149946928024292, -0.38543134927749634, -0.23809771239757538,"
    "-0.014776165597140789, 0.0035741685424000025, -0.11797274649143219, -0.057895224541425705,"
    "-0.019718727096915245, 0.02621384710073471, -0.06395233422517776, -0.04366165027022362, -0.07491102069616318,"
    "-0.18022184073925018, -0.0956660807132721, -0.019981624558568, -0.0031362653244286776, -4.187612285022624e-05,"
    "0.0, 0.0, 0.0]}, \"replace\": {\"n\": 83200, \"gain_db\": 4.593477347904784, \"loudness\": -14.000000225537965,"
    "\"true_peak\": -1.9002132962814056, \"abs_sum\": 11288.938977143269, \"music_abs_sum\": 11288.938977143269, \"audio\":"
    "[-9.64650147955437e-12, 0.02715141326189041, 0.08081517368555069, 0.27035292983055115, -0.004211863502860069,"
    "0.5214256048202515, -0.17845481634140015, 0.19367371499538422, -0.17996934056282043, -0.05387428402900696,"
    "-0.39886474609375, 0.05648047477006912, 0.0015234467573463917], \"music\": [-9.64650147955437e-12,"
    "0.02715141326189041, 0.08081517368555069, 0.27035292983055115, -0.004211863502860069, 0.5214256048202515,"
    "-0.17845481634140015, 0.19367371499538422, -0.17996934056282043, -0.05387428402900696, -0.39886474609375,"
    "0.05648047477006912, 0.0015234467573463917]}}")
MONO_INDEX = np.linspace(0, 3 * SR - 1, 23).astype(int)
MONO_SETTINGS = {"keep": M.MixOptions(), "keep_loud12": M.MixOptions(loudness=-12.0, music_gain=-2),
                 "replace": M.MixOptions(mix="replace")}
SPEECH = [(0.8, 1.6), (2.1, 2.4)]


def _inputs():
    """3 s of a modulated 300 Hz tone with noise and one loud burst (the original, 48 kHz) and 2.6 s of decaying
    square-wave hits (the music, 32 kHz)."""
    rng = np.random.default_rng(7)
    t = np.arange(int(3.0 * SR)) / SR
    orig = (0.1 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 1.3 * t))
            + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    orig[int(0.9 * SR):int(0.95 * SR)] *= 6
    tm = np.arange(int(2.6 * MUSIC_SR)) / MUSIC_SR
    music = (0.3 * np.sign(np.sin(2 * np.pi * 110 * tm)) * np.exp(-(tm % 0.5) * 6)
             + 0.05 * rng.standard_normal(tm.size)).astype(np.float32)
    return music, orig


@pytest.fixture()
def fixed_speech(monkeypatch):
    """Speech at SPEECH whatever the audio (the VAD is tested on its own); records what it was given."""
    seen = []

    def fake(x, sr, threshold=0.5, layout=None, folder=None, **kw):
        seen.append(M.Track.of(x).channels)
        return list(SPEECH)

    monkeypatch.setattr(M, "speech_intervals", fake)
    return seen


def _finish(name, music, orig, **kw):
    replace = name == "replace"
    return M.finish_audio(music, MUSIC_SR, None if replace else orig, None if replace else SR, MONO_SETTINGS[name],
                          headroom=0.5, **kw)


def _whole(x):
    return M.Track.of(x).array()


@pytest.mark.parametrize("name", list(MONO_SETTINGS))
def test_mono_input_gives_the_mono_chain_results(name, fixed_speech):
    """Same gain, loudness and true peak as the mono-only chain (to float64 rounding: 1e-9) and the same float32
    samples (exactly: the same operations in the same order, block by block)."""
    music, orig = _inputs()
    ref = MONO_REFERENCE[name]
    r = _finish(name, music, orig)
    audio, stem = np.asarray(r.audio), np.asarray(r.music)
    assert audio.shape == (ref["n"],) and r.layout == ("FC",)
    assert r.gain_db == pytest.approx(ref["gain_db"], abs=1e-9)
    assert r.loudness == pytest.approx(ref["loudness"], abs=1e-9)
    assert r.true_peak == pytest.approx(ref["true_peak"], abs=1e-9)
    idx = MONO_INDEX[MONO_INDEX < audio.size]
    assert audio[idx].tolist() == pytest.approx(ref["audio"], abs=0, rel=0)
    assert stem[idx].tolist() == pytest.approx(ref["music"], abs=0, rel=0)
    assert float(np.abs(audio.astype(np.float64)).sum()) == pytest.approx(ref["abs_sum"], rel=1e-12)
    assert float(np.abs(stem.astype(np.float64)).sum()) == pytest.approx(ref["music_abs_sum"], rel=1e-12)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_disk_tracks_give_the_in_memory_results(channels, tmp_path, monkeypatch, fixed_speech):
    """The chain with every whole-length signal in float32 files (folder=) equals the chain on arrays, sample for
    sample, with blocks of 997 samples (prime: block edges fall everywhere relative to gating blocks, resampling
    phases and limiter windows), and no track file is left open beyond the result's."""
    monkeypatch.setattr(M, "BLOCK", 997)
    music, orig = _inputs()
    rng = np.random.default_rng(1)
    multi = orig[None] * rng.uniform(0.3, 1.0, (channels, 1)).astype(np.float32)  # [C, M], channels differ
    multi[-1] += 0.05 * rng.standard_normal(orig.size).astype(np.float32)
    opts = M.MixOptions(width=0.5 if channels > 1 else 0.0)
    mem = M.finish_audio(music, MUSIC_SR, multi, SR, opts, headroom=0.5)
    disk = M.finish_audio(music, MUSIC_SR, M.Track.of(multi), SR, opts, headroom=0.5, folder=tmp_path)
    assert isinstance(disk.audio, M.Track) and disk.audio.path.parent == tmp_path
    np.testing.assert_array_equal(_whole(mem.audio), disk.audio.array())
    np.testing.assert_array_equal(_whole(mem.music), disk.music.array())
    assert (mem.gain_db, mem.loudness, mem.true_peak) == (disk.gain_db, disk.loudness, disk.true_peak)
    disk.audio.close()
    disk.music.close()
    assert list(tmp_path.iterdir()) == []  # envelope, limiter rounds, resampled music, mix: all removed


def test_track_reads_zero_outside_and_grows(tmp_path):
    for t in (M.Track.like(2, 5, None), M.Track.on_disk(2, 5, tmp_path)):
        t.write(3, np.ones((2, 4), np.float32))
        assert t.n == 7
        np.testing.assert_array_equal(t.read(-2, 9), np.array([[0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0]] * 2, np.float32))
        t.close()


# ------------------------------------------------------------------------------------------- channel measures
def test_stereo_loudness_matches_pyloudnorm_and_weights_the_surrounds():
    """BS.1770 on two different channels = pyloudnorm's (1e-9 LU); a 5.1 signal weighs L/R/C 1.0, surrounds 1.41,
    LFE 0 (pyloudnorm's 5-channel weights, with the LFE left out)."""
    import pyloudnorm

    rng = np.random.default_rng(2)
    n = 5 * SR
    t = np.arange(n) / SR
    left = 0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.7 * t))
    right = 0.05 * rng.standard_normal(n)
    x = np.stack([left, right])  # [2, N]
    assert M.integrated_loudness(x, SR) == pytest.approx(pyloudnorm.Meter(SR).integrated_loudness(x.T), abs=1e-9)
    six = np.stack([left, right, 0.5 * left, 3 * right, right[::-1], left[::-1]])  # FL FR FC LFE SL SR
    five = six[[0, 1, 2, 4, 5]]
    ref = pyloudnorm.Meter(SR).integrated_loudness(five.T)  # its G: 1, 1, 1, 1.41, 1.41
    assert M.integrated_loudness(six, SR, M.loudness_weights(M.default_layout(6))) == pytest.approx(ref, abs=1e-9)


def test_true_peak_is_per_channel():
    """A right channel whose samples sit at 0.707 but whose true peak is 1.0 (fs/4 sine at 45 degrees): the
    stereo true peak is that channel's 0 dBTP, not the sample peak nor the mean of the channels."""
    n = SR
    tone = np.sin(2 * np.pi * (SR / 4) * np.arange(n) / SR + np.pi / 4) * M.fade_gain(n, SR, 0.01, 0.01)
    x = np.stack([0.1 * tone, tone])
    assert M.true_peak(x, SR) == pytest.approx(M.true_peak(tone, SR), abs=1e-12)
    assert M.true_peak(x, SR) == pytest.approx(0.0, abs=0.05)
    env = M.peak_envelope(x, SR)
    np.testing.assert_array_equal(env, M.peak_envelope(tone, SR))  # the limiter sees the louder channel


# ------------------------------------------------------------------------------------------- placement
def test_music_placement_is_centred_and_folds_down_to_the_music():
    """Mono 1; stereo equal L/R; 5.1 equal L/R/C at 1/(1 + 0.7071), nothing in the LFE or the surrounds; in every
    layout the mono downmix (what read_audio reads) and, for 5.1, the BS.775 stereo downmix give the music back."""
    np.testing.assert_allclose(M.music_placement(("FC",)), [1.0])
    np.testing.assert_allclose(M.music_placement(("FL", "FR")), [1.0, 1.0])
    p = M.music_placement(M.default_layout(6))
    np.testing.assert_allclose(p, [1 / 1.7071, 1 / 1.7071, 1 / 1.7071, 0, 0, 0], rtol=1e-4)
    for names in [("FC",), ("FL", "FR"), M.default_layout(6), ("FL", "FR", "FC", "LFE", "BL", "BR")]:
        p = M.music_placement(names)
        assert float(M.downmix_weights(names) @ p) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(M.stereo_downmix(M.default_layout(6)) @ M.music_placement(M.default_layout(6)),
                               [1.0, 1.0], atol=1e-4)


@pytest.mark.parametrize("names", [("FL", "FR"), ("FL", "FR", "FC", "LFE", "SL", "SR")])
def test_finished_multichannel_track_keeps_the_original_image(names, fixed_speech):
    """Different content in every channel: the music is centred (L - R of the output is the original's L - R times
    the normalisation gain and the limiter, to float32 rounding), the LFE and the surrounds carry only the
    original's sound, and loudness / true peak hold the targets."""
    import pyloudnorm

    music, orig = _inputs()
    rng = np.random.default_rng(5)
    c = len(names)
    multi = np.stack([orig * (0.4 + 0.6 * (i % 2)) + 0.03 * rng.standard_normal(orig.size) for i in range(c)])
    multi = multi.astype(np.float32)  # [C, M]
    r = M.finish_audio(music, MUSIC_SR, multi, SR, M.MixOptions(), headroom=0.5, layout=names)
    out, stem = _whole(r.audio), _whole(r.music)
    assert out.shape == (c, orig.size) and r.layout == names and fixed_speech == [c]
    own = (out - stem).astype(np.float64)  # [C, M]: the original's share of each channel
    common = (own * multi).sum(0) / np.maximum((multi.astype(np.float64) ** 2).sum(0), 1e-12)  # [M] its gain
    assert np.max(np.abs(own - multi * common)) < 1e-6  # one gain for every channel (float32 rounding)
    gain = M.db_to_gain(r.gain_db)
    assert np.all(common <= gain * (1 + 1e-5)) and np.median(common) == pytest.approx(gain, rel=1e-5)
    diff = (out[0] - out[1]).astype(np.float64)
    assert np.max(np.abs(diff - (multi[0] - multi[1]) * common)) < 1e-6  # L - R kept, music cancels in it
    np.testing.assert_allclose(stem[0], stem[1], atol=0)  # centred music: equal in L and R
    if c == 6:
        np.testing.assert_array_equal(stem[3:], 0)  # LFE, SL, SR: no music
        np.testing.assert_allclose(stem[2], stem[0], atol=0)
    w = M.loudness_weights(names)
    assert r.loudness == pytest.approx(-14.0, abs=0.05)
    if c == 2:
        assert pyloudnorm.Meter(SR).integrated_loudness(out.T.astype(np.float64)) == pytest.approx(r.loudness,
                                                                                                     abs=1e-6)
    assert M.integrated_loudness(out, SR, w) == pytest.approx(r.loudness, abs=1e-9)
    assert max(M.true_peak(ch, SR) for ch in out) <= -1.5 + 1e-3


def test_widening_is_mono_compatible(fixed_speech):
    """width 0.6: left and right differ (a side signal), their mean is the centred music (float32 rounding of
    centre + side and centre - side, values < 0.5: 1e-7)."""
    music, orig = _inputs()
    stereo = np.stack([orig, orig]) * np.float32(0.25)  # quiet: no limiting (its peaks differ with the width)
    opts = M.MixOptions(loudness=None, duck=0)
    centred = _whole(M.finish_audio(music, MUSIC_SR, stereo, SR, opts).music)
    wide = _whole(M.finish_audio(music, MUSIC_SR, stereo, SR, M.MixOptions(loudness=None, duck=0, width=0.6)).music)
    assert np.max(np.abs(wide[0] - wide[1])) > 0.05
    np.testing.assert_allclose((wide[0] + wide[1]) / 2, centred[0], atol=2e-7)
    with pytest.raises(VmasError, match="width"):
        M.MixOptions(width=1.5)


def test_speech_is_found_on_the_downmix():
    """A voice in the right channel only (left: quiet noise): the VAD on the stereo track finds the sentence as it
    does on the voice alone, where the left channel alone holds none."""
    from test_mixing import _espeak

    voice = _espeak("Hello everyone, and welcome back to the kitchen.", SR)
    pad = np.zeros(SR, np.float32)
    right = np.concatenate([pad, voice, pad]).astype(np.float32)
    left = (0.001 * np.random.default_rng(0).standard_normal(right.size)).astype(np.float32)
    stereo = np.stack([left, right])
    found = M.speech_intervals(stereo, SR)
    assert M.speech_intervals(left, SR) == []
    assert len(found) == 1 and found[0][0] == pytest.approx(1.0, abs=0.15)
    assert found[0][1] == pytest.approx(1.0 + voice.size / SR, abs=0.25)
    assert found == M.speech_intervals((left + right) / 2, SR)  # the downmix's own intervals


def test_cli_music_width_flag():
    from vmas.cli import build_parser

    assert build_parser().parse_args(["generate", "v.mp4", "--music-width", "0.4"]).music_width == 0.4
    assert build_parser().parse_args(["generate", "v.mp4"]).music_width == M.MixOptions().width == 0.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "v.mp4", "--music-width", "2"])
