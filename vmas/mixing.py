"""Finished audio for a video: the generated music under the video's own sound, ducked while someone speaks, at a
standard loudness.

Plain numpy arrays and sample rates in, no config objects; :func:`finish_audio` is the one entry point the
generation path calls, the other functions are its steps (each tested on its own in ``tests/test_mixing.py``):

1. :func:`speech_intervals` — voice activity in the original audio (Silero VAD, whose model ships inside the
   ``silero-vad`` wheel; run on a 16 kHz copy).
2. :func:`ducking_gain` — a gain curve that lowers the music by ``duck`` dB during speech. It starts going down
   ``attack`` seconds *before* each speech onset (the file is known in advance, so the dip is complete when the voice
   starts), holds through short pauses and comes back over ``release`` seconds. Ramps are raised-cosine in dB, so
   the gain has no corners and no clicks.
3. Music level: with the original kept, the music is first set to the loudness of the original audio plus
   ``music_gain`` dB; fades at the ends of the music (:func:`fade_gain`).
4. :func:`normalize_loudness` — the whole track to ``loudness`` LUFS (ITU-R BS.1770-4 integrated loudness, gated,
   measured with ``pyloudnorm``) with the true peak (4x oversampled, BS.1770 Annex 2) at or below ``true_peak``
   dBTP: a look-ahead limiter takes the peaks that normalisation pushes over the ceiling, and the gain is
   re-measured until the loudness is on target.

Arrays are mono ``float [N]`` (the video's audio is averaged to mono by :func:`vmas.data.media.read_audio`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing as tp

import numpy as np

from vmas.errors import VmasError

MIX_MODES = ("keep", "replace")
VAD_RATE = 16000  # Silero VAD runs at 16 kHz
SILENCE_LUFS = -70.0  # BS.1770's absolute gate: anything quieter is silence


@dataclasses.dataclass
class MixOptions:
    """How the generated music becomes the video's audio track (``vmas generate --mix/--duck/--music-gain/--loudness``).

    Args:
        mix: ``"keep"`` mixes the music under the video's own audio, ``"replace"`` drops it; None = ``keep`` when
            the video has an audio stream, ``replace`` otherwise.
        duck: how many dB the music dips while someone speaks in the original audio (12 and -12 both mean 12 dB
            down; 0 turns ducking and voice detection off). Only with ``keep``.
        music_gain: dB added to the music. With ``keep`` the music is first set to the loudness of the original
            audio, so this is the music's level relative to the video's own sound: -4 puts it 4 dB under the voice
            between sentences and 16 dB under it (with ``duck`` -12) while someone speaks.
        loudness: integrated loudness of the finished track in LUFS (-14: the level streaming platforms play at);
            None = no loudness normalisation (the track is then only kept below the true-peak ceiling).
        true_peak: ceiling for the true peak in dBTP.
        attack: seconds over which the music dips before a speech onset.
        release: seconds over which it comes back after speech (after ``hold``).
        hold: seconds the dip stays after speech ends (bridges pauses between words).
        fade_in: seconds of fade-in at the start of the music (0 = none).
        fade_out: seconds of fade-out at the end of the music (0 = none).
        vad_threshold: Silero speech probability above which a 32 ms window counts as speech.
    """

    mix: tp.Optional[str] = None
    duck: float = -12.0
    music_gain: float = -4.0
    loudness: tp.Optional[float] = -14.0
    true_peak: float = -1.0
    attack: float = 0.15
    release: float = 0.6
    hold: float = 0.25
    fade_in: float = 0.5
    fade_out: float = 1.5
    vad_threshold: float = 0.5

    def __post_init__(self):
        if self.mix is not None and self.mix not in MIX_MODES:
            raise VmasError(f"mix must be one of {MIX_MODES} (or None = keep when the video has audio), "
                            f"got {self.mix!r}")
        if self.loudness is not None and not -70.0 < self.loudness < 0.0:
            raise VmasError(f"loudness must be between -70 and 0 LUFS (or None = off), got {self.loudness}")
        if self.true_peak > 0.0:
            raise VmasError(f"true_peak must be <= 0 dBTP, got {self.true_peak}")
        for name in ("attack", "release", "hold", "fade_in", "fade_out"):
            if getattr(self, name) < 0:
                raise VmasError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        if not 0.0 < self.vad_threshold < 1.0:
            raise VmasError(f"vad_threshold must be in (0, 1), got {self.vad_threshold}")

    @classmethod
    def names(cls) -> tp.List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def resolve_mode(self, has_audio: bool) -> str:
        return self.mix or ("keep" if has_audio else "replace")


@dataclasses.dataclass
class MixResult:
    audio: np.ndarray
    """float32 [N]: the finished track at ``sample_rate``."""
    sample_rate: int
    music: np.ndarray
    """float32 [N]: the music stem as it sits in ``audio`` (level, ducking, fades, normalisation and limiter)."""
    mode: str
    """``keep`` or ``replace``."""
    speech: tp.List[tp.Tuple[float, float]]
    """Speech found in the original audio, [(start, end)] in seconds (empty with ``replace`` or ``duck=0``)."""
    gain_db: float
    """Gain the loudness normalisation applied to the whole mix (before the limiter)."""
    loudness: float
    """Integrated loudness of ``audio`` (LUFS)."""
    true_peak: float
    """True peak of ``audio`` (dBTP)."""
    original_loudness: tp.Optional[float] = None
    """Integrated loudness of the original audio (LUFS; None with ``replace``)."""

    def summary(self) -> tp.Dict[str, tp.Any]:
        """The numbers without the arrays (what :class:`vmas.generate.GenerationResult` keeps)."""
        return {"mode": self.mode, "sample_rate": self.sample_rate, "loudness": round(self.loudness, 2),
                "true_peak": round(self.true_peak, 2), "gain_db": round(self.gain_db, 2),
                "original_loudness": None if self.original_loudness is None else round(self.original_loudness, 2),
                "speech": [(round(a, 3), round(b, 3)) for a, b in self.speech]}


# ----------------------------------------------------------------------------------------------- small helpers
def db_to_gain(db: tp.Union[float, np.ndarray]) -> tp.Union[float, np.ndarray]:
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 20.0)


def gain_to_db(gain: float) -> float:
    return 20.0 * math.log10(gain) if gain > 0 else -math.inf


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (scipy's Kaiser-windowed FIR), ``[..., N] -> [..., round(N * sr_out / sr_in)]``."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float64)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    y = resample_poly(np.asarray(x, dtype=np.float64), sr_out // g, sr_in // g, axis=-1)
    n = round(x.shape[-1] * sr_out / sr_in)
    return y[..., :n]


def _mono(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise VmasError(f"{name} must be mono audio [N], got shape {tuple(x.shape)}")
    return x


# ----------------------------------------------------------------------------------------------- measurements
def integrated_loudness(x: np.ndarray, sr: int) -> float:
    """ITU-R BS.1770-4 integrated loudness of mono ``x [N]`` in LUFS (K-weighting, 400 ms blocks with 75 %
    overlap, absolute gate -70 LUFS, relative gate -10 LU), measured by ``pyloudnorm``. Silence gives ``-inf``;
    audio shorter than one 400 ms block is measured as if it were repeated to one block's length."""
    import pyloudnorm

    x = _mono(x, "audio")
    block = int(math.ceil(0.4 * sr)) + 1
    if x.size == 0 or not np.any(x):
        return -math.inf
    if x.size < block:  # pyloudnorm needs one full block
        x = np.tile(x, int(math.ceil(block / x.size)))
    with np.errstate(divide="ignore"):
        return float(pyloudnorm.Meter(sr).integrated_loudness(x))


def oversample_factor(sr: int) -> int:
    """BS.1770-4 Annex 2: 4x oversampling for 48 kHz; fewer times at higher rates (the true-peak meter runs at
    >= 192 kHz)."""
    return max(1, int(math.ceil(192000 / sr))) if sr < 192000 else 1


def _oversampled(x: np.ndarray, sr: int) -> np.ndarray:
    from scipy.signal import resample_poly

    up = oversample_factor(sr)
    return np.asarray(x, np.float64) if up == 1 else resample_poly(np.asarray(x, np.float64), up, 1)


def true_peak(x: np.ndarray, sr: int) -> float:
    """True peak of ``x [N]`` in dBTP: the largest magnitude of the signal oversampled to >= 192 kHz (4x at 48 kHz,
    6x at 32 kHz) with a windowed-sinc interpolator, so peaks between samples count (BS.1770-4 Annex 2)."""
    x = _mono(x, "audio")
    if x.size == 0:
        return -math.inf
    return gain_to_db(float(np.max(np.abs(_oversampled(x, sr)))))


# ----------------------------------------------------------------------------------------------- voice activity
@functools.lru_cache(maxsize=1)
def _silero():
    import warnings

    from silero_vad import load_silero_vad

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice, not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        return load_silero_vad()


def speech_intervals(x: np.ndarray, sr: int, threshold: float = 0.5, min_silence: float = 0.3,
                     min_speech: float = 0.25, pad: float = 0.03) -> tp.List[tp.Tuple[float, float]]:
    """Where someone speaks in ``x [N]`` (``sr`` Hz): [(start, end)] in seconds, by Silero VAD (the JIT model in
    the ``silero-vad`` wheel, on a 16 kHz copy). Pauses shorter than ``min_silence`` do not split an interval;
    bursts shorter than ``min_speech`` are dropped; ``pad`` seconds are added on both sides."""
    import torch
    from silero_vad import get_speech_timestamps

    x = _mono(x, "audio")
    if x.size < VAD_RATE // 10 or not np.any(x):
        return []
    x16 = torch.from_numpy(resample(x, sr, VAD_RATE).astype(np.float32))
    with torch.no_grad():
        stamps = get_speech_timestamps(x16, _silero(), threshold=threshold, sampling_rate=VAD_RATE,
                                       min_speech_duration_ms=int(min_speech * 1000),
                                       min_silence_duration_ms=int(min_silence * 1000),
                                       speech_pad_ms=int(pad * 1000))
    return [(s["start"] / VAD_RATE, s["end"] / VAD_RATE) for s in stamps]


# ----------------------------------------------------------------------------------------------- gain curves
def _smoothstep(e: np.ndarray) -> np.ndarray:
    """Raised cosine 0 -> 1: zero slope at both ends, so a gain built on it has no corners."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(e, 0.0, 1.0))


def ducking_gain(intervals: tp.Sequence[tp.Tuple[float, float]], n: int, sr: int, duck: float = -12.0,
                 attack: float = 0.15, release: float = 0.6, hold: float = 0.25) -> np.ndarray:
    """Linear gain ``[n]`` for the music: 1 away from speech, ``10 ** (-|duck| / 20)`` during each interval.

    The dip is complete at each speech onset (it ramps down over the ``attack`` seconds before it), stays
    ``hold`` seconds after the speech ends and ramps back over ``release`` seconds. The ramps are raised cosines in
    dB, and overlapping ramps take the deeper dip.
    """
    depth = -abs(float(duck))
    if n <= 0:
        return np.ones(0)
    idx = np.arange(n, dtype=np.float64)
    mask = np.zeros(n, dtype=bool)
    for start, end in intervals:
        a, b = max(0, int(round(start * sr))), min(n, int(round(end * sr)))
        if b > a:
            mask[a:b] = True
    if depth == 0.0 or not mask.any():
        return np.ones(n)
    last = np.maximum.accumulate(np.where(mask, idx, -np.inf))  # latest speech sample at or before each sample
    nxt = np.minimum.accumulate(np.where(mask, idx, np.inf)[::-1])[::-1]  # next speech sample at or after
    after, before = idx - last, nxt - idx  # samples since the last / until the next speech (0 inside speech)
    down = 1.0 - before / max(attack * sr, 1.0)
    up = 1.0 - np.maximum(after - hold * sr, 0.0) / max(release * sr, 1.0)
    env = _smoothstep(np.maximum(np.nan_to_num(down, neginf=0.0), np.nan_to_num(up, neginf=0.0)))  # [n] in [0, 1]
    return db_to_gain(depth * env)


def fade_gain(n: int, sr: int, fade_in: float = 0.5, fade_out: float = 1.5) -> np.ndarray:
    """Linear gain ``[n]``: raised-cosine fade-in over the first ``fade_in`` seconds and fade-out over the last
    ``fade_out`` seconds (each at most a quarter of the length)."""
    g = np.ones(n)
    for seconds, at_start in ((fade_in, True), (fade_out, False)):
        k = min(int(round(seconds * sr)), n // 4)
        if k <= 0:
            continue
        ramp = _smoothstep((np.arange(k) + 0.5) / k)
        if at_start:
            g[:k] *= ramp
        else:
            g[n - k:] *= ramp[::-1]
    return g


# ----------------------------------------------------------------------------------------------- loudness
def _forward_min(g: np.ndarray, size: int) -> np.ndarray:
    """``out[i] = min(g[i : i + size])`` (ones past the end)."""
    from scipy.ndimage import minimum_filter1d

    padded = np.concatenate([g, np.ones(size)])
    return minimum_filter1d(padded, size, mode="nearest")[size // 2: size // 2 + g.size]


def _trailing_mean(g: np.ndarray, size: int) -> np.ndarray:
    """``out[i] = mean(g[i - size + 1 : i + 1])`` (ones before the start)."""
    c = np.cumsum(np.concatenate([np.ones(size), g]))
    return (c[size:] - c[:-size]) / size


def peak_envelope(x: np.ndarray, sr: int) -> np.ndarray:
    """``[N]``: the largest magnitude of the oversampled (true-peak) signal from sample i to sample i+1."""
    x = _mono(x, "audio")
    n, up = x.size, oversample_factor(sr)
    xo = np.abs(_oversampled(x, sr))
    xo = np.pad(xo, (0, n * up - xo.size))[: n * up].reshape(n, up)
    peak = np.abs(x)
    for k in range(1, up):  # column by column: much faster than a max over a short last axis
        peak = np.maximum(peak, xo[:, k])
    return peak


def limiter_gain(x: np.ndarray, sr: int, ceiling_db: float, stages: tp.Sequence[float] = (0.001, 0.01),
                 envelope: tp.Optional[np.ndarray] = None) -> np.ndarray:
    """Look-ahead peak limiter: a smooth gain ``[N] <= 1`` such that ``x * gain`` stays under ``ceiling_db`` at
    every oversampled (true) peak.

    Each stage takes, for every sample, the smallest gain needed over the next ``w`` seconds and averages that
    over the previous ``w`` seconds: the result is never above what any peak needs (each average includes the
    peak's own window) and ramps down over ``w`` seconds before the peak and up over ``w`` after it. A short stage
    then a longer one gives smooth, rounded ramps (1 + 10 ms by default: on a peaky voice a 40 ms release holds
    the gain down through whole syllables and costs ~4 dB more limiting for the same loudness). ``envelope`` is
    :func:`peak_envelope` of ``x`` when the caller already has it.
    """
    peak = peak_envelope(x, sr) if envelope is None else envelope
    ceiling = float(db_to_gain(ceiling_db))
    g = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    if g.min() >= 1.0:
        return np.ones(peak.size)
    for seconds in stages:
        w = max(1, int(round(seconds * sr)))
        # w ones in front, so the averages near the start also see the minima of the first samples
        g = _trailing_mean(_forward_min(np.concatenate([np.ones(w), g]), w), w)[w:]
    return g


def normalize_loudness(x: np.ndarray, sr: int, target: tp.Optional[float] = -14.0, ceiling: float = -1.0,
                       max_rounds: int = 12, tolerance: float = 0.05) -> tp.Tuple[np.ndarray, float, np.ndarray]:
    """``x [N]`` at ``target`` LUFS integrated with the true peak <= ``ceiling`` dBTP.

    Gain to target, then the limiter on what went over the ceiling. Limiting lowers the loudness, the more so the
    harder it works (a peaky voice raised by 10 dB gains only ~0.4 LU per dB), so the gain is updated by the
    secant method on the measured (gain, loudness) pairs until the loudness is within ``tolerance`` LU (2-5
    rounds). The gain stays within 12 dB of the plain gain, so a target the ceiling cannot allow (a very peaky
    track asked for -9 LUFS) ends at the closest loudness reached, which the caller can read back. With
    ``target=None`` (or silence) only the limiter runs.

    Returns ``(y [N], total gain in dB before limiting, limiter gain [N])``.
    """
    x = _mono(x, "audio")
    margin = 0.05  # the limiter works on 4x samples of the input; the final check below catches the rest
    envelope = peak_envelope(x, sr)  # scales with the gain: computed once
    level = integrated_loudness(x, sr) if target is not None else -math.inf
    active = math.isfinite(level) and level > SILENCE_LUFS
    total_db, slope, prev = (target - level if active else 0.0), 1.0, (0.0, level)
    first_db = total_db
    best = None  # (miss in LU, y, total_db, limit): a target the ceiling makes unreachable ends at the closest
    for _ in range(max_rounds):
        gain = float(db_to_gain(total_db))
        limit = limiter_gain(x, sr, ceiling - margin, envelope=envelope * gain)
        y = x * gain * limit
        if not active:
            best = (0.0, y, total_db, limit)
            break
        level = integrated_loudness(y, sr)
        if best is None or abs(level - target) < best[0]:
            best = (abs(level - target), y, total_db, limit)
        if abs(level - target) <= tolerance:
            break
        if total_db != prev[0]:
            slope = min(1.0, max(0.05, (level - prev[1]) / (total_db - prev[0])))
        prev = (total_db, level)
        # at most 12 dB past the plain gain: beyond that the limiter would flatten the track into a square wave
        total_db = min(total_db + float(np.clip((target - level) / slope, -12.0, 12.0)), first_db + 12.0)
    _, y, total_db, limit = best
    over = true_peak(y, sr) - ceiling
    if over > 0:  # rare: an interpolated peak the per-sample limiter estimate missed by a few hundredths of a dB
        y = y * db_to_gain(-over - 1e-3)
        limit = limit * db_to_gain(-over - 1e-3)
    return y, total_db, limit


# ----------------------------------------------------------------------------------------------- the whole chain
def finish_audio(music: np.ndarray, music_sr: int, original: tp.Optional[np.ndarray] = None,
                 original_sr: tp.Optional[int] = None, options: tp.Optional[MixOptions] = None,
                 headroom: float = 0.0) -> MixResult:
    """The finished track: generated ``music [N]`` at ``music_sr`` plus, unless ``options.mix == "replace"``, the
    video's ``original [M]`` audio at ``original_sr`` (None = the video has no audio stream).

    With ``keep`` the track runs at ``original_sr`` for ``max(N, M)`` samples (the music is resampled and starts at
    0); with ``replace`` at ``music_sr`` for ``N`` samples. ``headroom`` dB are kept free under the true-peak
    ceiling for a lossy encoder after this step (AAC's decoded peaks overshoot the PCM's by up to ~0.5 dB).
    """
    opts = options or MixOptions()
    music = _mono(music, "music")
    mode = opts.resolve_mode(original is not None)
    if mode == "keep" and original is None:
        raise VmasError("--mix keep needs a video with an audio stream; this one has none (use --mix replace)")
    speech: tp.List[tp.Tuple[float, float]] = []
    original_loudness = None
    if mode == "keep":
        if original_sr is None:
            raise VmasError("finish_audio: original_sr is required with the original audio")
        sr = int(original_sr)
        orig = _mono(original, "original audio")
        music = resample(music, music_sr, sr)
        n = max(orig.size, music.size)
        orig = np.pad(orig, (0, n - orig.size))
        original_loudness = integrated_loudness(orig, sr)
        stem = music * fade_gain(music.size, sr, opts.fade_in, opts.fade_out)
        level = integrated_loudness(music, sr)  # measured without the fades
        if math.isfinite(level) and original_loudness > SILENCE_LUFS:  # music at the original's loudness
            stem = stem * db_to_gain(original_loudness - level)
        stem = np.pad(stem * db_to_gain(opts.music_gain), (0, n - stem.size))
        if opts.duck != 0:
            speech = speech_intervals(orig, sr, threshold=opts.vad_threshold)
            stem = stem * ducking_gain(speech, n, sr, opts.duck, opts.attack, opts.release, opts.hold)
        mix = orig + stem
    else:
        sr = int(music_sr)
        stem = music * fade_gain(music.size, sr, opts.fade_in, opts.fade_out) * db_to_gain(opts.music_gain)
        mix = stem
    out, gain_db, limit = normalize_loudness(mix, sr, opts.loudness, opts.true_peak - abs(headroom))
    stem = stem * db_to_gain(gain_db) * limit
    return MixResult(audio=out.astype(np.float32), sample_rate=sr, music=stem.astype(np.float32), mode=mode,
                     speech=speech, gain_db=float(gain_db), loudness=integrated_loudness(out, sr),
                     true_peak=true_peak(out, sr), original_loudness=original_loudness)


def encode_within_ceiling(audio: np.ndarray, sr: int, ceiling: float,
                          encode: tp.Callable[[np.ndarray], np.ndarray], tries: int = 2) -> tp.Tuple[np.ndarray, np.ndarray]:
    """Write ``audio`` with a lossy encoder and keep the *decoded* true peak under ``ceiling`` dBTP.

    ``encode(audio) -> decoded`` writes the file and returns what a player will decode from it (same rate). AAC's
    decoded peaks can sit up to ~0.5 dB above the PCM's; :func:`finish_audio`'s ``headroom`` usually absorbs that,
    and when it does not, the audio is lowered by the excess and encoded again. Returns ``(audio, decoded)``.
    """
    decoded = encode(audio)
    for _ in range(tries):
        over = true_peak(decoded, sr) - ceiling
        if over <= 0:
            break
        audio = (audio * db_to_gain(-over - 0.05)).astype(audio.dtype)
        decoded = encode(audio)
    return audio, decoded


__all__ = ["MixOptions", "MixResult", "MIX_MODES", "finish_audio", "speech_intervals", "ducking_gain", "fade_gain",
           "integrated_loudness", "true_peak", "peak_envelope", "limiter_gain", "normalize_loudness",
           "encode_within_ceiling", "resample", "db_to_gain"]
