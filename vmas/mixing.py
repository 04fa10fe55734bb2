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
   measured as ``pyloudnorm`` does, block by block) with the true peak (4x oversampled, BS.1770 Annex 2) at or below ``true_peak``
   dBTP: a look-ahead limiter takes the peaks that normalisation pushes over the ceiling, and the gain is
   re-measured until the loudness is on target.

Arrays are mono ``float [N]`` (the video's audio is averaged to mono by :func:`vmas.data.media.read_audio`).

Memory: every measurement and gain curve runs block by block (:data:`BLOCK` samples, with the margin each step's
filter reaches), so a long video costs only its tracks themselves, kept as float32 (~11.5 MB per minute at
48 kHz per copy), never a float64 or 4x-oversampled copy of the whole track.
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
BLOCK = 1 << 17
"""Samples per block of the block-wise steps (2.7 s at 48 kHz): their working memory is a few blocks, whatever
the length of the track."""


@dataclasses.dataclass
class MixOptions:
    """How the generated music becomes the video's audio track (``vmas generate --mix/--duck/--music-gain/--loudness``).

    Args:
        mix: ``"keep"`` mixes the music under the video's own audio, ``"replace"`` drops it; None = ``keep`` when
            the video has an audio stream, ``replace`` otherwise.
        duck: how many dB the music dips while someone speaks in the original audio (12 and -12 both mean 12 dB
            down; 0 turns ducking and voice detection off). Only with ``keep``.
        music_gain: with ``keep``, the music's level relative to the video's own sound in dB (the music is first
            set to the loudness of the original audio): -4 puts it 4 dB under the voice between sentences and 16
            dB under it (with ``duck`` -12) while someone speaks. Not used with ``replace``: there is no other
            sound to sit under, so the music keeps its generated level (``loudness=None``: the music alone, as
            generated, only faded and kept under the ceiling) or goes to the ``loudness`` target.
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


def _spans(n: int, block: tp.Optional[int] = None, align: int = 1) -> tp.Iterator[tp.Tuple[int, int]]:
    """Consecutive ``(start, end)`` covering ``[0, n)`` of about ``block`` (default :data:`BLOCK`, read at call
    time) samples; every start is a multiple of ``align``."""
    block = BLOCK if block is None else block
    step = max(align, block - block % align)
    for s in range(0, n, step):
        yield s, min(n, s + step)


def resample(x: np.ndarray, sr_in: int, sr_out: int, block: tp.Optional[int] = None) -> np.ndarray:
    """Polyphase resampling (:func:`vmas.dsp.resample_poly`: scipy's Kaiser-windowed FIR), mono
    ``[N] -> float32 [round(N * sr_out / sr_in)]``.

    Block by block: each input block (starting at a multiple of the decimation factor, so it maps onto whole output
    samples) is resampled with the filter's reach of real neighbours on both sides; the result equals one
    ``resample_poly`` call on the whole signal (to float rounding) with memory of one block.
    """
    from vmas.dsp import resample_poly

    x = _mono(x, "audio")
    n_out = round(x.size * sr_out / sr_in)
    if sr_in == sr_out:
        return x.astype(np.float32)
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = sr_out // g, sr_in // g
    reach = 10 * max(up, down) // up + 2  # resample_poly's default filter: 10 * max(up, down) taps each side
    margin = -(-reach // down) * down  # whole multiples of `down`, so a block's output starts on a sample
    out = np.zeros(n_out, np.float32)
    for s, e in _spans(x.size, block, align=down):
        a, b = max(0, s - margin), min(x.size, e + margin)
        y = resample_poly(np.asarray(x[a:b], np.float64), up, down)  # output m is input time a + m * down / up
        o = s * up // down
        stop = min(n_out, (e * up) // down if e < x.size else n_out)
        off = (s - a) * up // down
        out[o:stop] = y[off: off + stop - o]
    return out


def _mono(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a 1-D float array without copying (float32 stays float32: the block-wise steps widen per block)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise VmasError(f"{name} must be mono audio [N], got shape {tuple(x.shape)}")
    return x


# ----------------------------------------------------------------------------------------------- measurements
def k_weighting(sr: int) -> tp.List[tp.Tuple[np.ndarray, np.ndarray]]:
    """BS.1770's K-weighting as two biquads ``[(b, a)]`` at ``sr``: a +4 dB high shelf at 1.5 kHz (Q = 1/sqrt 2)
    then a 38 Hz high-pass (Q = 0.5), each designed with the RBJ audio-EQ cookbook formulas at the given rate —
    the filters ``pyloudnorm`` uses (its ``Meter(sr)._filters``, compared in ``tests/test_mixing.py``), so both
    meters read the same."""
    def biquad(kind: str, gain_db: float, q: float, fc: float):
        A = 10.0 ** (gain_db / 40.0)
        w0 = 2.0 * math.pi * fc / sr
        cos, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
        if kind == "high_shelf":
            root = 2.0 * math.sqrt(A) * alpha
            b = [A * ((A + 1) + (A - 1) * cos + root), -2 * A * ((A - 1) + (A + 1) * cos),
                 A * ((A + 1) + (A - 1) * cos - root)]
            a = [(A + 1) - (A - 1) * cos + root, 2 * ((A - 1) - (A + 1) * cos), (A + 1) - (A - 1) * cos - root]
        else:  # high_pass
            b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
            a = [1 + alpha, -2 * cos, 1 - alpha]
        return np.array(b) / a[0], np.array(a) / a[0]

    return [biquad("high_shelf", 4.0, 1 / math.sqrt(2), 1500.0), biquad("high_pass", 0.0, 0.5, 38.0)]


LOUDNESS_BLOCK = 0.4
"""BS.1770 gating block (s); blocks start every quarter block (75 % overlap)."""


def integrated_loudness(x: np.ndarray, sr: int) -> float:
    """ITU-R BS.1770-4 integrated loudness of mono ``x [N]`` in LUFS (K-weighting, 400 ms blocks with 75 %
    overlap, absolute gate -70 LUFS, relative gate -10 LU), as ``pyloudnorm`` measures it (same filters, same block
    bounds; ``tests/test_mixing.py`` compares the two to 1e-9 LU) but block by block: the K-weighting filters carry
    their state from block to block and only each gating block's mean square is kept. Silence gives ``-inf``;
    audio shorter than one 400 ms block is measured as if it were repeated to one block's length."""
    from vmas.dsp import lfilter

    x = _mono(x, "audio")
    block = int(math.ceil(0.4 * sr)) + 1
    if x.size == 0 or not np.any(x):
        return -math.inf
    if x.size < block:  # pyloudnorm needs one full block
        x = np.tile(x, int(math.ceil(block / x.size)))
    filters = k_weighting(sr)
    t_g, step, n = LOUDNESS_BLOCK, 0.25, x.size
    count = int(np.round((n / sr - t_g) / (t_g * step))) + 1
    lo = np.array([int(t_g * (j * step) * sr) for j in range(count)])  # [J] block bounds, as pyloudnorm rounds them
    hi = np.minimum([int(t_g * (j * step + 1) * sr) for j in range(count)], n)
    bounds = np.unique(np.concatenate([lo, hi, [0, n]]))  # [S + 1]: the blocks are unions of these segments
    seg = np.zeros(bounds.size)  # seg[i]: sum of squares of the filtered signal over [bounds[i], bounds[i + 1])
    states = [np.zeros(max(len(a), len(b)) - 1) for b, a in filters]
    for s, e in _spans(n):
        y = np.asarray(x[s:e], np.float64)
        for i, (b, a) in enumerate(filters):
            y, states[i] = lfilter(b, a, y, zi=states[i])
        cuts = np.concatenate([[s], bounds[(bounds > s) & (bounds < e)]])  # [c] piece starts within the block
        np.add.at(seg, np.searchsorted(bounds, cuts, side="right") - 1, np.add.reduceat(y * y, cuts - s))
    prefix = np.concatenate([[0.0], np.cumsum(seg)])
    z = (prefix[np.searchsorted(bounds, hi)] - prefix[np.searchsorted(bounds, lo)]) / (t_g * sr)  # [J] mean squares
    with np.errstate(divide="ignore"):
        level = -0.691 + 10.0 * np.log10(z)
    above = z[level >= SILENCE_LUFS]
    if above.size == 0:
        return -math.inf
    relative = -0.691 + 10.0 * np.log10(np.mean(above)) - 10.0
    gated = z[(level > relative) & (level > SILENCE_LUFS)]
    return -0.691 + 10.0 * math.log10(np.mean(gated)) if gated.size and np.mean(gated) > 0 else -math.inf


def oversample_factor(sr: int) -> int:
    """BS.1770-4 Annex 2: 4x oversampling for 48 kHz; fewer times at higher rates (the true-peak meter runs at
    >= 192 kHz)."""
    return max(1, int(math.ceil(192000 / sr))) if sr < 192000 else 1


OVERSAMPLE_MARGIN = 16
"""Input samples on each side of a block for the true-peak interpolator (``resample_poly``'s filter reaches 10)."""


def _oversampled_blocks(x: np.ndarray, sr: int, block: tp.Optional[int] = None) -> tp.Iterator[tp.Tuple[int, np.ndarray]]:
    """``(start, xo)`` for consecutive blocks of ``x [N]``: ``xo float64 [(end - start) * up]`` is that block's
    part of the whole signal oversampled :func:`oversample_factor` times (equal to one ``resample_poly`` call on
    the whole signal, to float rounding; memory: one block)."""
    from vmas.dsp import resample_poly

    up = oversample_factor(sr)
    for s, e in _spans(x.size, block):
        if up == 1:
            yield s, np.asarray(x[s:e], np.float64)
            continue
        a, b = max(0, s - OVERSAMPLE_MARGIN), min(x.size, e + OVERSAMPLE_MARGIN)
        xo = resample_poly(np.asarray(x[a:b], np.float64), up, 1)  # [(b - a) * up]
        yield s, xo[(s - a) * up: (e - a) * up]


def true_peak(x: np.ndarray, sr: int) -> float:
    """True peak of ``x [N]`` in dBTP: the largest magnitude of the signal oversampled to >= 192 kHz (4x at 48 kHz,
    6x at 32 kHz) with a windowed-sinc interpolator, so peaks between samples count (BS.1770-4 Annex 2)."""
    x = _mono(x, "audio")
    if x.size == 0:
        return -math.inf
    return gain_to_db(max(float(np.max(np.abs(xo))) for _, xo in _oversampled_blocks(x, sr)))


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


def _speech_spans(intervals: tp.Sequence[tp.Tuple[float, float]], n: int, sr: int) -> tp.Tuple[np.ndarray, np.ndarray]:
    """Speech as merged, sorted sample spans ``[a, b)`` clipped to ``[0, n)``: starts [I], ends [I]."""
    spans = sorted((max(0, int(round(a * sr))), min(n, int(round(b * sr)))) for a, b in intervals)
    merged: tp.List[tp.List[int]] = []
    for a, b in spans:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    arr = np.array(merged, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def ducking_gain(intervals: tp.Sequence[tp.Tuple[float, float]], n: int, sr: int, duck: float = -12.0,
                 attack: float = 0.15, release: float = 0.6, hold: float = 0.25, start: int = 0,
                 stop: tp.Optional[int] = None) -> np.ndarray:
    """Linear gain ``[stop - start]`` for samples ``[start, stop)`` (default: all ``n``) of the music: 1 away from
    speech, ``10 ** (-|duck| / 20)`` during each interval.

    The dip is complete at each speech onset (it ramps down over the ``attack`` seconds before it), stays
    ``hold`` seconds after the speech ends and ramps back over ``release`` seconds. The ramps are raised cosines in
    dB, and overlapping ramps take the deeper dip. Any range can be asked for on its own (the nearest speech before
    and after each sample comes from the interval list), so the curve is built block by block.
    """
    depth = -abs(float(duck))
    stop = n if stop is None else min(n, stop)
    m = max(0, stop - start)
    starts, ends = _speech_spans(intervals, n, sr)
    if m == 0 or depth == 0.0 or starts.size == 0:
        return np.ones(m)
    idx = np.arange(start, stop, dtype=np.int64)  # [m]
    k = np.searchsorted(starts, idx, side="right") - 1  # last span starting at or before each sample
    last = np.where(k >= 0, np.minimum(idx, ends[np.maximum(k, 0)] - 1), -1).astype(np.float64)
    last[k < 0] = -np.inf  # latest speech sample at or before each sample
    k2 = np.searchsorted(ends, idx, side="right")  # first span ending after each sample
    nxt = np.where(k2 < starts.size, np.maximum(idx, starts[np.minimum(k2, starts.size - 1)]), 0).astype(np.float64)
    nxt[k2 >= starts.size] = np.inf  # next speech sample at or after each sample
    after, before = idx - last, nxt - idx  # samples since the last / until the next speech (0 inside speech)
    down = 1.0 - before / max(attack * sr, 1.0)
    up = 1.0 - np.maximum(after - hold * sr, 0.0) / max(release * sr, 1.0)
    env = _smoothstep(np.maximum(np.nan_to_num(down, neginf=0.0), np.nan_to_num(up, neginf=0.0)))  # [m] in [0, 1]
    return db_to_gain(depth * env)


def _fade_ramps(n: int, sr: int, fade_in: float, fade_out: float) -> tp.Tuple[np.ndarray, np.ndarray]:
    """The raised-cosine fade-in [k_in] and fade-out [k_out] ramps of :func:`fade_gain` (each at most n // 4)."""
    ramps = []
    for seconds in (fade_in, fade_out):
        k = max(0, min(int(round(seconds * sr)), n // 4))
        ramps.append(_smoothstep((np.arange(k) + 0.5) / k) if k else np.ones(0))
    return ramps[0], ramps[1][::-1]


def fade_gain(n: int, sr: int, fade_in: float = 0.5, fade_out: float = 1.5) -> np.ndarray:
    """Linear gain ``[n]``: raised-cosine fade-in over the first ``fade_in`` seconds and fade-out over the last
    ``fade_out`` seconds (each at most a quarter of the length)."""
    return apply_fades(np.ones(n), sr, fade_in, fade_out)


def apply_fades(x: np.ndarray, sr: int, fade_in: float = 0.5, fade_out: float = 1.5) -> np.ndarray:
    """``x * fade_gain(...)`` in place (only the faded ends are touched); returns ``x``."""
    ramp_in, ramp_out = _fade_ramps(x.size, sr, fade_in, fade_out)
    x[: ramp_in.size] *= ramp_in.astype(x.dtype)
    if ramp_out.size:
        x[x.size - ramp_out.size:] *= ramp_out.astype(x.dtype)
    return x


# ----------------------------------------------------------------------------------------------- loudness
def _forward_min(g: np.ndarray, size: int) -> np.ndarray:
    """``out[i] = min(g[i : i + size])`` (ones past the end)."""
    from vmas.dsp import forward_min

    return forward_min(g, size, fill=1.0)


def _trailing_mean(g: np.ndarray, size: int) -> np.ndarray:
    """``out[i] = mean(g[i - size + 1 : i + 1])`` (ones before the start)."""
    c = np.cumsum(np.concatenate([np.ones(size), g]))
    return (c[size:] - c[:-size]) / size


def peak_envelope(x: np.ndarray, sr: int) -> np.ndarray:
    """``float32 [N]``: the largest magnitude of the oversampled (true-peak) signal from sample i to sample i+1."""
    x = _mono(x, "audio")
    up = oversample_factor(sr)
    out = np.empty(x.size, np.float32)
    for s, xo in _oversampled_blocks(x, sr):
        m = xo.size // up
        xo = np.abs(xo).reshape(m, up)  # [m, up]
        peak = np.abs(np.asarray(x[s: s + m], np.float64))
        for k in range(1, up):  # column by column: much faster than a max over a short last axis
            peak = np.maximum(peak, xo[:, k])
        out[s: s + m] = peak
    return out


def limiter_gain(x: np.ndarray, sr: int, ceiling_db: float, stages: tp.Sequence[float] = (0.001, 0.01),
                 envelope: tp.Optional[np.ndarray] = None) -> np.ndarray:
    """Look-ahead peak limiter: a smooth gain ``float32 [N] <= 1`` such that ``x * gain`` stays under
    ``ceiling_db`` at every oversampled (true) peak.

    Each stage takes, for every sample, the smallest gain needed over the next ``w`` seconds and averages that
    over the previous ``w`` seconds: the result is never above what any peak needs (each average includes the
    peak's own window) and ramps down over ``w`` seconds before the peak and up over ``w`` after it. A short stage
    then a longer one gives smooth, rounded ramps (1 + 10 ms by default: on a peaky voice a 40 ms release holds
    the gain down through whole syllables and costs ~4 dB more limiting for the same loudness). ``envelope`` is
    :func:`peak_envelope` of ``x`` when the caller already has it. A sample's gain depends only on the envelope
    within the stages' total width of it, so the curve is built block by block with that margin.
    """
    peak = peak_envelope(x, sr) if envelope is None else envelope
    ceiling = float(db_to_gain(ceiling_db))
    widths = [max(1, int(round(seconds * sr))) for seconds in stages]
    margin = sum(widths) + 1
    out = np.ones(peak.size, np.float32)
    for s, e in _spans(peak.size):
        a, b = max(0, s - margin), min(peak.size, e + margin)
        g = np.minimum(1.0, ceiling / np.maximum(np.asarray(peak[a:b], np.float64), 1e-12))
        if g.min() >= 1.0:
            continue
        for w in widths:  # w ones in front, so the averages near the start also see the minima of the first samples
            g = _trailing_mean(_forward_min(np.concatenate([np.ones(w), g]), w), w)[w:]
        out[s:e] = g[s - a: e - a]
    return out


def normalize_loudness(x: np.ndarray, sr: int, target: tp.Optional[float] = -14.0, ceiling: float = -1.0,
                       max_rounds: int = 12, tolerance: float = 0.05) -> tp.Tuple[np.ndarray, float, np.ndarray]:
    """``x [N]`` at ``target`` LUFS integrated with the true peak <= ``ceiling`` dBTP.

    Gain to target, then the limiter on what went over the ceiling. Limiting lowers the loudness, the more so the
    harder it works (a peaky voice raised by 10 dB gains only ~0.4 LU per dB), so the gain is updated by the
    secant method on the measured (gain, loudness) pairs until the loudness is within ``tolerance`` LU (2-5
    rounds). The gain stays within 12 dB of the plain gain, so a target the ceiling cannot allow (a very peaky
    track asked for -9 LUFS) ends at the closest loudness reached, which the caller can read back. With
    ``target=None`` (or silence) only the limiter runs.

    Returns ``(y float32 [N], total gain in dB before limiting, limiter gain float32 [N])``.
    """
    x = _mono(x, "audio")
    margin = 0.05  # the limiter works on 4x samples of the input; the final check below catches the rest
    envelope = peak_envelope(x, sr)  # scales with the gain: computed once, the ceiling is moved instead
    level = integrated_loudness(x, sr) if target is not None else -math.inf
    active = math.isfinite(level) and level > SILENCE_LUFS
    total_db, slope, prev = (target - level if active else 0.0), 1.0, (0.0, level)
    first_db = total_db

    def apply(gain_db: float, limit: np.ndarray) -> np.ndarray:
        y = x.astype(np.float32)  # [N]
        y *= np.float32(db_to_gain(gain_db))
        y *= limit
        return y

    best = None  # (miss in LU, total_db, limit): a target the ceiling makes unreachable ends at the closest
    for _ in range(max_rounds):
        limit = limiter_gain(x, sr, ceiling - margin - total_db, envelope=envelope)  # x * gain under the ceiling
        if not active:
            best = (0.0, total_db, limit)
            break
        level = integrated_loudness(apply(total_db, limit), sr)
        if best is None or abs(level - target) < best[0]:
            best = (abs(level - target), total_db, limit)
        if abs(level - target) <= tolerance:
            break
        if total_db != prev[0]:
            slope = min(1.0, max(0.05, (level - prev[1]) / (total_db - prev[0])))
        prev = (total_db, level)
        # at most 12 dB past the plain gain: beyond that the limiter would flatten the track into a square wave
        total_db = min(total_db + float(np.clip((target - level) / slope, -12.0, 12.0)), first_db + 12.0)
    _, total_db, limit = best
    del envelope
    y = apply(total_db, limit)
    over = true_peak(y, sr) - ceiling
    if over > 0:  # rare: an interpolated peak the per-sample limiter estimate missed by a few hundredths of a dB
        fix = np.float32(db_to_gain(-over - 1e-3))
        y *= fix
        limit = limit * fix
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
        stem = resample(music, music_sr, sr)  # float32 [N'], a new array: scaled in place below
        n = max(orig.size, stem.size)
        original_loudness = integrated_loudness(orig, sr)
        level = integrated_loudness(stem, sr)  # measured without the fades
        apply_fades(stem, sr, opts.fade_in, opts.fade_out)
        gain = db_to_gain(opts.music_gain)
        if math.isfinite(level) and original_loudness > SILENCE_LUFS:  # music at the original's loudness
            gain = gain * db_to_gain(original_loudness - level)
        stem *= np.float32(gain)
        stem = np.pad(stem, (0, n - stem.size))  # [n]
        if opts.duck != 0:
            speech = speech_intervals(orig, sr, threshold=opts.vad_threshold)
            for s, e in _spans(n):
                stem[s:e] *= ducking_gain(speech, n, sr, opts.duck, opts.attack, opts.release, opts.hold,
                                          start=s, stop=e).astype(np.float32)
        mix = np.pad(orig.astype(np.float32, copy=False), (0, n - orig.size))  # [n], a new array
        mix += stem
    else:  # the music alone at its generated level (music_gain is relative to an original that is not there)
        sr = int(music_sr)
        stem = apply_fades(music.astype(np.float32), sr, opts.fade_in, opts.fade_out)
        mix = stem
    out, gain_db, limit = normalize_loudness(mix, sr, opts.loudness, opts.true_peak - abs(headroom))
    del mix
    stem *= np.float32(db_to_gain(gain_db))
    stem *= limit
    return MixResult(audio=out, sample_rate=sr, music=stem, mode=mode, speech=speech, gain_db=float(gain_db),
                     loudness=integrated_loudness(out, sr), true_peak=true_peak(out, sr),
                     original_loudness=original_loudness)


def encode_within_ceiling(audio: np.ndarray, sr: int, ceiling: float,
                          encode: tp.Callable[[np.ndarray], np.ndarray], tries: int = 3) -> tp.Tuple[np.ndarray, np.ndarray]:
    """Write ``audio`` with a lossy encoder and keep the *decoded* true peak under ``ceiling`` dBTP.

    ``encode(audio) -> decoded`` writes the file and returns what a player will decode from it (same rate). AAC's
    decoded peaks can sit above the PCM's (~0.5 dB usually, 1.4 dB measured on a 10-minute mix);
    :func:`finish_audio`'s ``headroom`` usually absorbs that. When it does not, the PCM's peaks are limited further
    by the excess (the look-ahead limiter, not a gain on the whole track: the loudness stays on target, where
    lowering the whole 10-minute mix cost 0.9 LU) and the audio is encoded again. Returns ``(audio, decoded)``.
    """
    decoded = encode(audio)
    for _ in range(tries):
        over = true_peak(decoded, sr) - ceiling
        if over <= 0:
            break
        limit = limiter_gain(audio, sr, true_peak(audio, sr) - over - 0.05)
        audio = (audio * limit).astype(audio.dtype)
        decoded = encode(audio)
    return audio, decoded


__all__ = ["MixOptions", "MixResult", "MIX_MODES", "finish_audio", "speech_intervals", "ducking_gain", "fade_gain",
           "integrated_loudness", "true_peak", "peak_envelope", "limiter_gain", "normalize_loudness",
           "encode_within_ceiling", "resample", "db_to_gain", "apply_fades"]
