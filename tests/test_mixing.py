"""Finished audio (issue 24): loudness and true peak against BS.1770 reference values, the ducking curve by hand,
and the whole chain on real speech rendered by espeak-ng, checking the issue's measurements:

(a) during speech the music stem is >= 10 dB below its level between sentences;
(b) the speech in the output is within 1 dB of the original speech level (after the one normalisation gain);
(c) integrated loudness within 0.5 LU of the target and true peak <= -1 dBTP;
(d) without original audio, the music alone at the target loudness.
"""
import math
import shutil
import subprocess

import numpy as np
import pytest

from vmas import mixing as M
from vmas.errors import VmasError

SR = 48000  # the video's own audio
MUSIC_SR = 32000  # the codec's rate
GAP = 2.5  # seconds between the two sentences
LEAD = 1.5  # silence before the first and after the last sentence
SENTENCES = ["Hello everyone, and welcome back to the kitchen.", "Today we are going to bake a loaf of bread."]


def _db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)


def _fft_true_peak(x: np.ndarray) -> float:
    """Independent check of the true peak: 4x band-limited (FFT) interpolation instead of the polyphase FIR."""
    from scipy.signal import resample

    return 20 * math.log10(float(np.max(np.abs(resample(x, 4 * x.size)))))


def _pyloudnorm(x: np.ndarray, sr: int) -> float:
    import pyloudnorm

    return pyloudnorm.Meter(sr).integrated_loudness(np.asarray(x, np.float64))


def _espeak(text: str, sr: int = SR) -> np.ndarray:
    """A sentence spoken by espeak-ng, trimmed to where the voice is (|x| > 1 % of full scale), at ``sr``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng; `make test` installs it as root)")
    import io

    import soundfile

    raw = subprocess.run([exe, "--stdout", "-s", "160", text], check=True, capture_output=True).stdout
    wav, rate = soundfile.read(io.BytesIO(raw), dtype="float64")
    active = np.nonzero(np.abs(wav) > 0.01)[0]
    return M.resample(wav[active[0]: active[-1] + 1], rate, sr)


@pytest.fixture(scope="module")
def speech():
    """The original track: LEAD s of silence, sentence 1, GAP s, sentence 2, LEAD s; and where the voice is."""
    a, b = (_espeak(s) for s in SENTENCES)
    lead, gap = np.zeros(round(LEAD * SR)), np.zeros(round(GAP * SR))
    track = np.concatenate([lead, a, gap, b, lead])
    t1 = LEAD + a.size / SR
    t2 = t1 + GAP
    return track, [(LEAD, t1), (t2, t2 + b.size / SR)]


def _music(seconds: float, sr: int = MUSIC_SR, level: float = 0.2, seed: int = 0) -> np.ndarray:
    """A steady stand-in for generated music (an A minor chord plus a little noise): its level only changes where
    the mixer changes it."""
    t = np.arange(round(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f * t + k) for k, f in enumerate([220.0, 261.63, 329.63, 440.0]))
    x += 0.3 * np.random.default_rng(seed).standard_normal(t.size)
    return level * x / np.max(np.abs(x))


def _at_lufs(x: np.ndarray, sr: int, lufs: float) -> np.ndarray:
    return x * M.db_to_gain(lufs - M.integrated_loudness(x, sr))


def _mask(intervals, n, sr, shrink=0.0):
    m = np.zeros(n, dtype=bool)
    for s, e in intervals:
        m[round((s + shrink) * sr): round((e - shrink) * sr)] = True
    return m


# ------------------------------------------------------------------------------------------- reference values
@pytest.mark.parametrize("sr", [48000, 32000])
def test_loudness_of_a_1khz_sine_matches_bs1770(sr):
    """BS.1770-4: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS; at -20 dBFS it reads -23.01."""
    t = np.arange(5 * sr) / sr
    sine = np.sin(2 * np.pi * 997 * t)
    assert M.integrated_loudness(sine, sr) == pytest.approx(-3.01, abs=0.05)
    assert M.integrated_loudness(0.1 * sine, sr) == pytest.approx(-23.01, abs=0.05)
    # the absolute gate: silence, and anything below -70 LUFS, has no loudness
    assert M.integrated_loudness(np.zeros(sr), sr) == -math.inf


@pytest.mark.parametrize("sr", [48000, 32000])
def test_true_peak_sees_the_peak_between_samples(sr):
    """A sine at fs/4 with a 45 degree phase has every sample at 0.707 (-3.01 dBFS) but its true peak is 1.0
    (0 dBTP); 4x oversampling (6x at 32 kHz) finds it (BS.1770-4 Annex 2 allows a small overread)."""
    n = sr
    x = np.sin(2 * np.pi * (sr / 4) * np.arange(n) / sr + np.pi / 4) * M.fade_gain(n, sr, 0.01, 0.01)
    assert 20 * math.log10(np.max(np.abs(x))) == pytest.approx(-3.01, abs=0.01)
    assert M.true_peak(x, sr) == pytest.approx(0.0, abs=0.05)
    assert M.true_peak(x, sr) == pytest.approx(_fft_true_peak(x), abs=0.05)
    assert M.oversample_factor(48000) == 4


# ------------------------------------------------------------------------------------------- block by block
@pytest.fixture()
def small_blocks(monkeypatch):
    """Blocks of 997 samples (prime, so block edges fall everywhere relative to 400 ms gating blocks, resampling
    phases and limiter windows): a long track's block boundaries, exercised on a short signal."""
    monkeypatch.setattr(M, "BLOCK", 997)


def _music_like(n: int, sr: int, seed: int = 0) -> np.ndarray:
    """Tones with a bursty envelope and quiet stretches (the gating and the limiter both have work to do)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    env = np.repeat(rng.uniform(0.0, 1.0, n // (sr // 10) + 1), sr // 10)[:n] ** 3
    return (env * (np.sin(2 * np.pi * 440 * t) + 0.3 * rng.standard_normal(n))).astype(np.float32)


@pytest.mark.parametrize("sr", [48000, 32000, 44100])
def test_blockwise_measurements_equal_the_whole_signal_references(sr, small_blocks):
    """Loudness = pyloudnorm on the whole float64 signal; true peak and the peak envelope = one resample_poly call
    on the whole signal; resampling = one resample_poly call; the limiter = its whole-signal definition."""
    from scipy.signal import resample_poly

    x = _music_like(3 * sr + 123, sr)
    assert M.integrated_loudness(x, sr) == pytest.approx(_pyloudnorm(x, sr), abs=1e-9)
    up = M.oversample_factor(sr)
    xo = resample_poly(x.astype(np.float64), up, 1)
    assert M.true_peak(x, sr) == pytest.approx(20 * math.log10(np.max(np.abs(xo))), abs=1e-9)
    env = np.maximum(np.abs(x), np.abs(xo.reshape(-1, up)[:, 1:]).max(axis=1))
    np.testing.assert_allclose(M.peak_envelope(x, sr), env, rtol=1e-6)
    for sr_out in (48000, 16000, 32000):
        g = math.gcd(sr, sr_out)
        ref = resample_poly(x.astype(np.float64), sr_out // g, sr // g)[: round(x.size * sr_out / sr)]
        got = M.resample(x, sr, sr_out)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-6)
    # the limiter: gains from the whole envelope at once (BLOCK larger than the signal) equal the blocked ones
    blocked = M.limiter_gain(x, sr, -6.0, envelope=env.astype(np.float32))
    M.BLOCK = 1 << 30
    np.testing.assert_allclose(blocked, M.limiter_gain(x, sr, -6.0, envelope=env.astype(np.float32)), atol=1e-6)
    assert blocked.min() < 0.5  # it did limit


def test_blockwise_ducking_equals_the_whole_curve():
    sr, n = 1000, 9000
    speech = [(2.0, 3.0), (2.9, 3.4), (6.0, 6.05), (8.99, 12.0)]
    whole = M.ducking_gain(speech, n, sr, duck=-10, attack=0.3, release=0.5, hold=0.2)
    parts = np.concatenate([M.ducking_gain(speech, n, sr, duck=-10, attack=0.3, release=0.5, hold=0.2, start=s,
                                           stop=min(n, s + 701)) for s in range(0, n, 701)])
    np.testing.assert_array_equal(parts, whole)
    # the merged spans mean the same as the union of the intervals: full depth wherever someone speaks
    assert np.allclose(whole[2000:3400], 10 ** (-10 / 20)) and whole[6020] == pytest.approx(10 ** (-0.5))


# ------------------------------------------------------------------------------------------- gain curves by hand
def test_ducking_curve_hand_values_and_no_clicks():
    sr = 1000
    g = M.ducking_gain([(2.0, 3.0)], 6000, sr, duck=-12, attack=0.2, release=0.4, hold=0.1)
    db = 20 * np.log10(g)
    assert db[0] == 0 and db[-1] == 0
    assert db[2000] == pytest.approx(-12) and db[2500] == pytest.approx(-12)  # full dip from the onset on
    assert db[1900] == pytest.approx(-6, abs=0.01)  # half way through the attack (raised cosine in dB)
    assert db[1800] == pytest.approx(0)  # attack starts 0.2 s before the onset
    assert db[3099] == pytest.approx(-12)  # held 0.1 s after the end
    assert db[3300] == pytest.approx(-6, abs=0.05)  # half way through the release
    assert db[3500] == pytest.approx(0)
    assert np.all(np.diff(db[1700:2001]) <= 1e-12) and np.all(np.diff(db[2999:3600]) >= -1e-12)  # monotone ramps
    # smooth: the largest step is pi/2 x the mean slope of the ramp, nowhere a jump
    assert np.max(np.abs(np.diff(db))) <= 12 / (0.2 * sr) * math.pi / 2 + 1e-9
    assert np.array_equal(M.ducking_gain([(2.0, 3.0)], 6000, sr, duck=12), M.ducking_gain([(2.0, 3.0)], 6000, sr))
    assert np.all(M.ducking_gain([(2.0, 3.0)], 6000, sr, duck=0) == 1) and np.all(M.ducking_gain([], 100, sr) == 1)


def test_fades_start_and_end_at_silence():
    g = M.fade_gain(10000, 1000, fade_in=0.5, fade_out=1.0)
    assert g[0] < 1e-4 and g[-1] < 1e-4 and np.all(g[500:9000] == 1)
    assert g[250] == pytest.approx(0.5, abs=0.01) and g[9500] == pytest.approx(0.5, abs=0.01)
    assert np.all(np.diff(g[:500]) > 0) and np.all(np.diff(g[9000:]) < 0)


def test_limiter_brings_a_peaky_track_to_target_loudness_under_the_ceiling():
    """Clicks over a quiet tone: plain gain to -14 LUFS would put the true peak at +16 dBTP; the limiter takes
    the clicks down and the loop re-measures until the loudness is on target."""
    sr = SR
    t = np.arange(5 * sr) / sr
    x = 0.05 * np.sin(2 * np.pi * 220 * t)
    x[:: sr // 4] += 0.9
    y, gain_db, limit = M.normalize_loudness(x, sr, -14.0, -1.0)
    assert _pyloudnorm(y, sr) == pytest.approx(-14.0, abs=0.1)
    assert _fft_true_peak(y) <= -1.0 and M.true_peak(y, sr) <= -1.0
    assert 0 < limit.min() < 0.2 and np.median(limit) == 1.0  # only around the clicks
    assert np.max(np.abs(np.diff(limit))) < 0.01  # ramps, not steps


def test_options_are_checked():
    for bad in [dict(mix="mute"), dict(loudness=3.0), dict(true_peak=0.5), dict(attack=-1.0)]:
        with pytest.raises(VmasError):
            M.MixOptions(**bad)
    assert M.MixOptions().resolve_mode(True) == "keep" and M.MixOptions().resolve_mode(False) == "replace"
    assert M.MixOptions(mix="replace").resolve_mode(True) == "replace"
    with pytest.raises(VmasError, match="has none"):
        M.finish_audio(_music(1.0), MUSIC_SR, None, options=M.MixOptions(mix="keep"))


# ------------------------------------------------------------------------------------------- real speech
def test_vad_finds_the_spoken_sentences_and_nothing_in_music(speech):
    track, truth = speech
    found = M.speech_intervals(track, SR)
    n = track.size
    hit, spoken = _mask(found, n, SR), _mask(truth, n, SR)
    assert hit[spoken].mean() > 0.95  # the sentences are found
    assert (hit & ~_mask([(s - 0.2, e + 0.2) for s, e in truth], n, SR)).sum() / SR < 0.05  # nothing elsewhere
    assert M.speech_intervals(_music(6.0, SR), SR) == []


@pytest.fixture(scope="module")
def mixes(speech):
    """The chain on a typical vlog track (speech at -14 LUFS) and on a quiet one (-30 LUFS)."""
    track, truth = speech
    music = _music(track.size / SR + 0.5)  # longer than the video's audio: the track keeps the longer length
    out = {}
    for name, level in [("typical", -14.0), ("quiet", -30.0)]:
        orig = _at_lufs(track, SR, level)
        out[name] = (orig, M.finish_audio(music, MUSIC_SR, orig, SR, M.MixOptions()))
    return truth, out


@pytest.mark.parametrize("name", ["typical", "quiet"])
def test_music_ducks_at_least_10db_under_speech(mixes, name):
    """(a) on the music stem as it sits in the output: during speech vs the middle of the pause between the
    sentences (where the release is over and the next attack has not begun)."""
    truth, out = mixes
    orig, res = out[name]
    during = _db(res.music[_mask(truth, res.music.size, SR)])
    pause = (truth[0][1] + 0.9, truth[1][0] - 0.3)
    between = _db(res.music[_mask([pause], res.music.size, SR)])
    print(f"[{name}] music during speech {during - between:.2f} dB relative to between sentences")
    assert between - during >= 10.0
    # the requested 12 dB; more where the limiter also takes down loud syllables (and the music under them)
    assert 11.5 <= between - during <= 17.0


@pytest.mark.parametrize("name", ["typical", "quiet"])
def test_speech_keeps_its_level(mixes, name):
    """(b) RMS of the output over the spoken sentences vs the original's.

    A track already at -14 LUFS (typical) keeps its voice within 1 dB. A quiet one is raised to the target, as the
    voice alone would be: the voice in the mix is within 1 dB of the original voice put through the same
    normalisation on its own, i.e. the music under it neither masks nor lowers it. Either way the voice in the
    output is the original's waveform.
    """
    truth, out = mixes
    orig, res = out[name]
    spoken = _mask(truth, orig.size, SR)
    diff = _db(res.audio[: orig.size][spoken]) - _db(orig[spoken])
    alone = M.normalize_loudness(orig, SR, -14.0, -1.0)[0]
    diff_alone = _db(alone[spoken]) - _db(orig[spoken])
    print(f"[{name}] speech level change {diff:+.2f} dB (voice alone normalised: {diff_alone:+.2f} dB)")
    assert abs(diff - diff_alone) <= 1.0
    if name == "typical":
        assert abs(diff) <= 1.0
    # the music under the voice (12 dB down) and the limiter's gain changes are the rest
    assert np.corrcoef(res.audio[: orig.size][spoken], orig[spoken])[0, 1] > 0.85


@pytest.mark.parametrize("name", ["typical", "quiet"])
def test_finished_track_is_at_target_loudness_under_the_peak_ceiling(mixes, name):
    """(c), measured again independently: pyloudnorm on the output, and FFT interpolation for the true peak."""
    truth, out = mixes
    orig, res = out[name]
    assert res.mode == "keep" and res.sample_rate == SR
    assert res.audio.size == round(res.music.size) and res.audio.size >= orig.size
    print(f"[{name}] original {res.original_loudness:.2f} LUFS -> {_pyloudnorm(res.audio, SR):.2f} LUFS, "
          f"true peak {_fft_true_peak(res.audio):.2f} dBTP")
    assert abs(_pyloudnorm(res.audio, SR) - (-14.0)) <= 0.5
    assert abs(res.loudness - (-14.0)) <= 0.1
    assert _fft_true_peak(res.audio) <= -1.0 and res.true_peak <= -1.0


def test_replace_gives_the_music_alone_at_target_loudness():
    """(d): no original audio -> the music alone (at its own rate), faded in and out, at -14 LUFS, <= -1 dBTP;
    another target works the same way."""
    music = _music(6.0, level=0.02)
    for target in (-14.0, -23.0):
        res = M.finish_audio(music, MUSIC_SR, None, options=M.MixOptions(loudness=target))
        assert res.mode == "replace" and res.sample_rate == MUSIC_SR and res.speech == []
        assert np.array_equal(res.audio, res.music)
        assert abs(_pyloudnorm(res.audio, MUSIC_SR) - target) <= 0.5
        assert _fft_true_peak(res.audio) <= -1.0
        assert abs(res.audio[0]) < 1e-4 and abs(res.audio[-1]) < 1e-4  # fades
        assert np.corrcoef(res.audio[MUSIC_SR:-2 * MUSIC_SR], music[MUSIC_SR:-2 * MUSIC_SR])[0, 1] > 0.999


def test_music_gain_sets_the_balance_and_loudness_off_keeps_levels(speech):
    """With ``keep`` the music plays at the original's loudness + music_gain between sentences; with
    loudness=None nothing is normalised (only the ceiling applies); duck=0 skips voice detection."""
    track, truth = speech
    orig = _at_lufs(track, SR, -24.0)  # quiet enough that voice + music stay under the -1 dBTP ceiling
    music = _music(track.size / SR)
    pause = _mask([(truth[0][1] + 0.9, truth[1][0] - 0.3)], track.size, SR)
    plain = M.finish_audio(music, MUSIC_SR, orig, SR, M.MixOptions(duck=0, loudness=None, fade_in=0, fade_out=0,
                                                                   music_gain=0.0))
    lower = M.finish_audio(music, MUSIC_SR, orig, SR, M.MixOptions(duck=0, loudness=None, music_gain=-6.0))
    assert plain.speech == [] and plain.gain_db == 0.0
    assert M.integrated_loudness(plain.music, SR) == pytest.approx(-24.0, abs=0.1)  # no fades in `plain`
    assert _db(lower.music[: track.size][pause]) - _db(plain.music[: track.size][pause]) == pytest.approx(-6.0, abs=0.05)
    assert np.allclose(plain.audio[: track.size], orig + plain.music[: track.size], atol=1e-6)  # the original untouched


# ------------------------------------------------------------------------------------------- end to end
def _video_only_mp4(path, seconds: float, fps: int = 25, size=(32, 48)):
    """An mp4 with a video stream and no audio stream."""
    from fractions import Fraction

    import av

    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[1], size[0], "yuv420p"
        for k in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray((rng.random((*size, 3)) * 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
    return path


@pytest.mark.slow
def test_vmas_generate_keeps_speech_and_hits_the_loudness(tmp_path, capsys):
    """`vmas generate` (debug model) on a video with espeak speech in its audio track, and on one with no audio
    stream: the first keeps the voice (same waveform, same level up to the loudness normalisation) under the
    music at -14 LUFS; the second gets the music alone at -14 LUFS; both decoded mp4s stay <= -1 dBTP (after
    AAC). NAME.wav stays the music alone, as the model made it."""
    from datasets.synthmv import write_mp4
    from vmas.cli import main
    from vmas.data import media

    a, b = (_espeak(s, MUSIC_SR) for s in SENTENCES)
    one, pause = np.zeros(MUSIC_SR), np.zeros(round(1.5 * MUSIC_SR))
    voice = np.concatenate([one, a, pause, b, one]).astype(np.float32)
    t1 = 1.0 + a.size / MUSIC_SR
    truth = [(1.0, t1), (t1 + 1.5, t1 + 1.5 + b.size / MUSIC_SR)]
    seconds = voice.size / MUSIC_SR
    frames = (np.random.default_rng(0).random((round(seconds * 25), 32, 48, 3)) * 255).astype(np.uint8)
    talk = write_mp4(tmp_path / "talk.mp4", frames, voice, fps=25)
    silent = _video_only_mp4(tmp_path / "silent.mp4", 4.0)
    out = tmp_path / "out"
    rc = main(["generate", str(talk), str(silent), "-o", str(out), "--model", "vmas-debug-random", "--top-k", "16",
               "-q"])
    printed = capsys.readouterr().out
    assert rc == 0 and "talk.mp4" in printed and "audio: keep" in printed and "audio: replace" in printed

    orig = media.read_audio(talk, sr=SR).numpy().astype(np.float64)
    mixed = media.read_audio(out / "talk.mp4", sr=SR).numpy().astype(np.float64)
    n = min(orig.size, mixed.size)
    spoken = _mask(truth, n, SR)
    level = _pyloudnorm(mixed, SR)
    diff = _db(mixed[:n][spoken]) - _db(orig[:n][spoken])
    alone = M.normalize_loudness(orig, SR, -14.0, -1.0)[0]
    diff_alone = _db(alone[:n][spoken]) - _db(orig[:n][spoken])
    corr = np.corrcoef(mixed[:n][spoken], orig[:n][spoken])[0, 1]
    print(f"talk.mp4: {level:.2f} LUFS, {_fft_true_peak(mixed):.2f} dBTP, voice {diff:+.2f} dB "
          f"(alone {diff_alone:+.2f}), correlation {corr:.3f}")
    assert abs(level + 14.0) <= 0.5 and _fft_true_peak(mixed) <= -1.0
    assert abs(diff - diff_alone) <= 1.0 and corr > 0.85

    music = media.read_audio(out / "silent.mp4", sr=MUSIC_SR).numpy().astype(np.float64)
    raw = media.read_audio(out / "silent.wav", sr=MUSIC_SR).numpy().astype(np.float64)
    print(f"silent.mp4: {_pyloudnorm(music, MUSIC_SR):.2f} LUFS, {_fft_true_peak(music):.2f} dBTP "
          f"(the model's raw music: {_pyloudnorm(raw, MUSIC_SR):.2f} LUFS)")
    assert abs(_pyloudnorm(music, MUSIC_SR) + 14.0) <= 0.5 and _fft_true_peak(music) <= -1.0
    k = min(music.size, raw.size)
    mid = slice(MUSIC_SR, k - 2 * MUSIC_SR)  # inside the fades
    assert np.corrcoef(music[mid], raw[mid])[0, 1] > 0.9  # the music alone, louder


def test_encoder_overshoot_is_limited_not_turned_down():
    """A lossy encoder whose decoded peaks overshoot the PCM's by 1.4 dB (what AAC did on a 10-minute mix), on a
    track of drum-like hits over a tone at -14 LUFS: the decoded true peak ends under the ceiling and the loudness
    stays within 0.1 LU; lowering the whole track by the overshoot (as before) costs 1 LU here."""
    sr = 48000
    n = 20 * sr
    t = np.arange(n) / sr
    rng = np.random.default_rng(3)
    hits = np.zeros(n)
    for s in range(0, n, sr // 2):  # a 20 ms decaying noise burst every 0.5 s
        k = min(n - s, sr // 50)
        hits[s: s + k] = rng.standard_normal(k) * np.exp(-np.arange(k) / (sr / 200))
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.5 * t))
    x = M.normalize_loudness((tone + 0.8 * hits).astype(np.float32), sr, -14.0, -1.5)[0]

    def encode(a):  # samples above -6 dBFS come back 1.4 dB hotter
        return (a * np.where(np.abs(a) > 0.5, 10 ** (1.4 / 20), 1.0)).astype(np.float32)

    over = M.true_peak(encode(x), sr) + 1.0
    assert over > 0.9  # the overshoot is real
    audio, decoded = M.encode_within_ceiling(x, sr, -1.0, encode)
    assert M.true_peak(decoded, sr) <= -1.0
    level = M.integrated_loudness(x, sr)
    assert abs(M.integrated_loudness(audio, sr) - level) < 0.1
    assert M.integrated_loudness(x * M.db_to_gain(-over), sr) < level - 0.9  # what turning it down would cost
