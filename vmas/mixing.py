"""Finished audio for a video: the generated music under the video's own sound, ducked while someone speaks, at a
standard loudness, in the video's own channel layout.

Plain numpy arrays (or :class:`Track` s) and sample rates in, no config objects; :func:`finish_audio` is the one entry
point the generation path calls, the other functions are its steps (each tested on its own in
``tests/test_mixing.py``):

1. :func:`speech_intervals` — voice activity in the original audio's downmix (Silero VAD, whose model ships inside
   the ``silero-vad`` wheel; run on a 16 kHz copy, window by window).
2. :func:`ducking_gain` — a gain curve that lowers the music by ``duck`` dB during speech. It starts going down
   ``attack`` seconds *before* each speech onset (the file is known in advance, so the dip is complete when the voice
   starts), holds through short pauses and comes back over ``release`` seconds. Ramps are raised-cosine in dB, so
   the gain has no corners and no clicks.
3. Music level: with the original kept, the music is first set to the loudness of the original audio plus
   ``music_gain`` dB; fades at the ends of the music (:func:`fade_gain`).
4. :func:`normalize_loudness` — the whole track to ``loudness`` LUFS (ITU-R BS.1770-4 integrated loudness, gated,
   measured as ``pyloudnorm`` does, block by block, channels weighted as BS.1770 says) with the true peak (4x
   oversampled, BS.1770 Annex 2, per channel) at or below ``true_peak`` dBTP: a look-ahead limiter takes the peaks
   that normalisation pushes over the ceiling, and the gain is re-measured until the loudness is on target.

Channels (issue 35): audio is ``[C, N]`` (``[N]`` is mono). The finished track keeps the original's layout (FFmpeg
channel names, e.g. ``("FL", "FR")``): the mono music goes to the centre (:func:`music_placement`: equal in L and
R; L/R/C in 5.1, never the LFE or the surrounds), optionally widened by ``width`` (a mid/side pair whose fold-down
is the mono music exactly), one limiter gain for every channel (the stereo image does not move).

Memory: every step runs block by block (:data:`BLOCK` samples, with the margin each step's filter reaches) and
reads and writes whole-length signals through :class:`Track`: with ``folder`` given they live in float32 files
there (music, original, mix, limiter gain), so a video of any length costs a few blocks of memory.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import tempfile
import typing as tp
from pathlib import Path

import numpy as np

from vmas.errors import VmasError

MIX_MODES = ("keep", "replace")
VAD_RATE = 16000  # Silero VAD runs at 16 kHz
VAD_WINDOW = 512  # samples per Silero VAD window at 16 kHz
SILENCE_LUFS = -70.0  # BS.1770's absolute gate: anything quieter is silence
BLOCK = 1 << 17
"""Samples per block of the block-wise steps (2.7 s at 48 kHz): their working memory is a few blocks, whatever
the length of the track."""
WIDEN_DELAY = 0.012
"""Seconds by which the side signal of a widened music stem (``width`` > 0) lags the music."""


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
        width: stereo width of the music in a stereo or 5.1 track, 0 to 1 (0 = centred, the default): left and
            right get ``centre +- width * music delayed by 12 ms``, so the mono fold-down ``(L + R) / 2`` is the
            centred music exactly (mono-compatible). No effect on a mono track.
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
    width: float = 0.0

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
        if not 0.0 <= self.width <= 1.0:
            raise VmasError(f"width must be between 0 (centred music) and 1, got {self.width}")

    @classmethod
    def names(cls) -> tp.List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def resolve_mode(self, has_audio: bool) -> str:
        return self.mix or ("keep" if has_audio else "replace")


# ----------------------------------------------------------------------------------------------- tracks
class Track:
    """Audio ``[C, N]`` read and written a block of samples at a time, in memory or on disk.

    In memory it wraps an array (any float dtype, kept as it is: a float64 test signal is measured in float64);
    on disk (:meth:`on_disk`) it is a float32 file of interleaved frames ``[N, C]`` read and written with
    ``pread``/``pwrite``, so a block read costs the block and nothing stays mapped into the process: the page cache
    holds what was read, outside the process's resident memory. Reads past the written part return zeros.
    """

    def __init__(self, data: tp.Optional[np.ndarray] = None, path: tp.Optional[Path] = None, channels: int = 1,
                 n: int = 0):
        self.data = data  # [C, N] or None (on disk)
        self.path = path
        self.channels = int(channels if data is None else data.shape[0])
        self.n = int(n if data is None else data.shape[1])
        self._fd = None if path is None else os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @classmethod
    def of(cls, x: tp.Union["Track", np.ndarray, tp.Any]) -> "Track":
        """``x`` as a track without copying: a Track is itself, ``[N]`` is mono, ``[C, N]`` is C channels (an
        ``[N, 1]`` column is mono too); integers become float64."""
        if isinstance(x, Track):
            return x
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
        if x.ndim == 1:
            x = x[None]
        elif x.ndim == 2 and x.shape[1] == 1 and x.shape[0] > 1:
            x = x.T
        if x.ndim != 2:
            raise VmasError(f"audio must be [N] or [C, N], got shape {tuple(x.shape)}")
        return cls(data=x)

    @classmethod
    def on_disk(cls, channels: int, n: int, folder: tp.Union[str, Path]) -> "Track":
        """A zero track of ``n`` samples of ``channels`` in a new float32 file in ``folder`` (removed by
        :meth:`close`; the caller's folder is temporary anyway)."""
        fd, name = tempfile.mkstemp(prefix="track-", suffix=".f32", dir=folder)
        os.close(fd)
        return cls(path=Path(name), channels=channels, n=n)

    @classmethod
    def like(cls, channels: int, n: int, folder: tp.Optional[tp.Union[str, Path]]) -> "Track":
        """A float32 zero track on disk in ``folder``, or in memory when ``folder`` is None."""
        if folder is None:
            return cls(data=np.zeros((channels, n), np.float32))
        return cls.on_disk(channels, n, folder)

    @property
    def shape(self) -> tp.Tuple[int, int]:
        return self.channels, self.n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` as an array ``[C, stop - start]`` (float32 from disk; zeros outside the
        track). Within the track an in-memory track returns a view: callers never write into what they read."""
        want = max(0, stop - start)
        a, b = max(0, start), min(self.n if self.data is None else min(self.n, self.data.shape[1]), stop)
        m = max(0, b - a)
        if self.data is not None:
            if m == want:
                return self.data[:, a:b]  # a view: no copy for the common case
            out = np.zeros((self.channels, want), self.data.dtype)
            out[:, a - start: a - start + m] = self.data[:, a:b]
            return out
        size = 4 * self.channels
        raw = os.pread(self._fd, m * size, a * size) if m else b""
        out = np.zeros((want, self.channels), np.float32)
        got = np.frombuffer(raw, np.float32)
        if m:
            out[a - start: a - start + m].reshape(-1)[: got.size] = got
        return out.T

    def write(self, start: int, x: np.ndarray) -> None:
        """Store ``x [C, m]`` (or ``[m]`` for one channel) at ``start``; the track grows to hold it."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None]
        if self.data is not None:
            stop = start + x.shape[1]
            if stop > self.data.shape[1]:  # grow by doubling: appending frame by frame stays linear
                grown = np.zeros((self.channels, max(stop, 2 * self.data.shape[1])), self.data.dtype)
                grown[:, : self.data.shape[1]] = self.data
                self.data = grown
            if self.n > self.data.shape[1] or start > self.n:  # a region never written (n set past it): zeros
                self.data[:, min(self.n, self.data.shape[1]): start] = 0
            self.data[:, start:stop] = x
            self.n = max(self.n, stop)
            return
        self.n = max(self.n, start + x.shape[1])
        os.pwrite(self._fd, np.ascontiguousarray(x.T, dtype=np.float32).tobytes(), start * 4 * self.channels)

    def array(self) -> np.ndarray:
        """The whole track ``[C, N]`` in memory (tests, short tracks)."""
        return self.read(0, self.n)

    def any_nonzero(self) -> bool:
        return any(bool(np.any(self.read(s, e))) for s, e in _spans(self.n))

    def close(self) -> None:
        """Delete the file of an on-disk track."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _out(x: Track, was: tp.Any) -> tp.Union[Track, np.ndarray]:
    """What a public step returns: a Track when it was given one, else an array (``[N]`` for mono, as before)."""
    if isinstance(was, Track) or x.data is None:
        return x
    data = x.array()
    return data[0] if x.channels == 1 else data


# ----------------------------------------------------------------------------------------------- channel layouts
# Mono downmix weights by channel name: ITU-R BS.775's stereo downmix (L' = L + 0.707 C + 0.707 Ls, R' likewise,
# LFE left out as FFmpeg does) followed by the mean of L' and R'. Stereo is then the plain mean of its channels,
# and a voice in the centre channel keeps the level it has in a stereo mix (0.707 + 0.707, halved, per side).
_DOWNMIX = {"FL": 0.5, "FR": 0.5, "FC": 0.7071, "LFE": 0.0, "BC": 0.7071,
            "BL": 0.3536, "BR": 0.3536, "SL": 0.3536, "SR": 0.3536}
# ITU-R BS.775 stereo downmix (left, right) by channel name, for layouts the output codec cannot carry.
_STEREO = {"FL": (1.0, 0.0), "FR": (0.0, 1.0), "FC": (0.7071, 0.7071), "LFE": (0.0, 0.0), "BC": (0.5, 0.5),
           "BL": (0.7071, 0.0), "BR": (0.0, 0.7071), "SL": (0.7071, 0.0), "SR": (0.0, 0.7071)}
# BS.1770-4 channel weights G: 1.0 for left, right and centre, 1.41 (+1.5 dB) for the surrounds; the LFE is not
# measured. Any other channel counts as a front channel.
_BS1770_WEIGHT = {"LFE": 0.0, "BL": 1.41, "BR": 1.41, "SL": 1.41, "SR": 1.41}
_FRONT = ("FL", "FR", "FC")


def default_layout(channels: int) -> tp.Tuple[str, ...]:
    """FFmpeg's channel names of the usual layout of ``channels`` channels (mono, stereo, 5.1(side))."""
    known = {1: ("FC",), 2: ("FL", "FR"), 6: ("FL", "FR", "FC", "LFE", "SL", "SR")}
    if channels not in known:
        raise VmasError(f"no default channel layout for {channels} channels; pass the channel names (layout=)")
    return known[channels]


def downmix_weights(names: tp.Sequence[str]) -> np.ndarray:
    """Weights ``[C]`` that turn channels named ``names`` (FFmpeg's: FL, FR, FC, LFE, BL, BR, SL, SR, ...) into
    mono. One channel is itself; a layout with a name outside the table gets the plain mean."""
    if len(names) == 1:
        return np.ones(1, np.float32)
    if all(n in _DOWNMIX for n in names):
        return np.asarray([_DOWNMIX[n] for n in names], np.float32)
    return np.full(len(names), 1.0 / len(names), np.float32)


def stereo_downmix(names: tp.Sequence[str]) -> np.ndarray:
    """Matrix ``[2, C]`` from channels ``names`` to stereo (ITU-R BS.775, LFE dropped; an unknown channel goes to
    both sides at -6 dB). Its mono fold-down equals :func:`downmix_weights` on the named channels."""
    return np.asarray([_STEREO.get(n, (0.5, 0.5)) for n in names], np.float32).T


def loudness_weights(names: tp.Sequence[str]) -> np.ndarray:
    """BS.1770-4 channel weights ``float64 [C]`` (1.0 front, 1.41 surround, 0 LFE)."""
    return np.asarray([_BS1770_WEIGHT.get(n, 1.0) for n in names], np.float64)


def music_placement(names: tp.Sequence[str]) -> np.ndarray:
    """Gains ``[C]`` that place mono music in a layout: equal in its front channels (left, right and centre; every
    channel but the LFE when it has none of them), zero in the LFE and the surrounds, scaled so that the layout's
    mono downmix (:func:`downmix_weights`, what :func:`vmas.data.media.read_audio` reads) gives the music back at
    its own level: mono 1, stereo (1, 1), 5.1 0.586 in L, R and C (its stereo downmix is then (1, 1) too)."""
    names = tuple(names)
    w = downmix_weights(names).astype(np.float64)
    front = np.array([n in _FRONT for n in names]) if any(n in _FRONT for n in names) else \
        np.array([n != "LFE" for n in names])
    out = np.zeros(len(names))
    out[front] = 1.0 / w[front].sum()
    return out


def _width_pair(names: tp.Sequence[str]) -> tp.Optional[tp.Tuple[int, int]]:
    """Indices of the left and right front channels (where a widened music's side signal goes), if both exist."""
    names = tuple(names)
    return (names.index("FL"), names.index("FR")) if "FL" in names and "FR" in names else None


@dataclasses.dataclass
class MixResult:
    audio: tp.Union[np.ndarray, Track]
    """The finished track at ``sample_rate``: float32 ``[N]`` (mono) or ``[C, N]`` in ``layout``; a
    :class:`Track` on disk when :func:`finish_audio` was given a ``folder``."""
    sample_rate: int
    music: tp.Union[np.ndarray, Track]
    """The music stem as it sits in ``audio`` (placement, level, ducking, fades, normalisation and limiter), same
    shape."""
    mode: str
    """``keep`` or ``replace``."""
    speech: tp.List[tp.Tuple[float, float]]
    """Speech found in the original audio, [(start, end)] in seconds (empty with ``replace`` or ``duck=0``)."""
    gain_db: float
    """Gain the loudness normalisation applied to the whole mix (before the limiter)."""
    loudness: float
    """Integrated loudness of ``audio`` (LUFS)."""
    true_peak: float
    """True peak of ``audio`` (dBTP, the largest of its channels')."""
    original_loudness: tp.Optional[float] = None
    """Integrated loudness of the original audio (LUFS; None with ``replace``)."""
    layout: tp.Tuple[str, ...] = ("FC",)
    """FFmpeg channel names of ``audio``'s channels (``("FC",)``: mono)."""

    def summary(self) -> tp.Dict[str, tp.Any]:
        """The numbers without the arrays (what :class:`vmas.generate.GenerationResult` keeps)."""
        return {"mode": self.mode, "sample_rate": self.sample_rate, "loudness": round(self.loudness, 2),
                "true_peak": round(self.true_peak, 2), "gain_db": round(self.gain_db, 2),
                "original_loudness": None if self.original_loudness is None else round(self.original_loudness, 2),
                "speech": [(round(a, 3), round(b, 3)) for a, b in self.speech], "channels": len(self.layout)}


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


def _resample_into(x: Track, sr_in: int, sr_out: int, out: Track, block: tp.Optional[int] = None) -> Track:
    """:func:`resample` of every channel of ``x`` into ``out`` (``[C, round(N * sr_out / sr_in)]``)."""
    from vmas.dsp import resample_poly

    n_out = out.n
    if sr_in == sr_out:
        for s, e in _spans(x.n, block):
            out.write(s, x.read(s, e).astype(np.float32))
        return out
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = sr_out // g, sr_in // g
    reach = 10 * max(up, down) // up + 2  # resample_poly's default filter: 10 * max(up, down) taps each side
    margin = -(-reach // down) * down  # whole multiples of `down`, so a block's output starts on a sample
    for s, e in _spans(x.n, block, align=down):
        a, b = max(0, s - margin), min(x.n, e + margin)
        o = s * up // down
        stop = min(n_out, (e * up) // down if e < x.n else n_out)
        off = (s - a) * up // down
        piece = x.read(a, b)
        rows = []
        for c in range(x.channels):
            y = resample_poly(np.asarray(piece[c], np.float64), up, down)  # output m is input time a + m * down / up
            rows.append(y[off: off + stop - o])
        out.write(o, np.stack(rows).astype(np.float32))
    return out


def resample(x: tp.Union[np.ndarray, Track], sr_in: int, sr_out: int, block: tp.Optional[int] = None,
             folder: tp.Optional[tp.Union[str, Path]] = None) -> tp.Union[np.ndarray, Track]:
    """Polyphase resampling (:func:`vmas.dsp.resample_poly`: scipy's Kaiser-windowed FIR) of each channel,
    ``[C, N] -> float32 [C, round(N * sr_out / sr_in)]`` (``[N]`` in, ``[N']`` out).

    Block by block: each input block (starting at a multiple of the decimation factor, so it maps onto whole output
    samples) is resampled with the filter's reach of real neighbours on both sides; the result equals one
    ``resample_poly`` call on the whole signal (to float rounding) with memory of one block. With ``folder`` the
    result is a :class:`Track` on disk there.
    """
    t = Track.of(x)
    out = Track.like(t.channels, round(t.n * sr_out / sr_in), folder)
    return _out(_resample_into(t, sr_in, sr_out, out, block), x)


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


def _weights(t: Track, weights: tp.Optional[tp.Sequence[float]]) -> np.ndarray:
    """BS.1770 channel weights ``[C]`` for ``t``: given, else 1.0 for one channel and the default layout's."""
    if weights is None:
        weights = [1.0] if t.channels == 1 else loudness_weights(default_layout(t.channels))
    w = np.asarray(weights, np.float64)
    if w.shape != (t.channels,):
        raise VmasError(f"{t.channels} channels need {t.channels} loudness weights, got {w.shape}")
    return w


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

Reader = tp.Callable[[int, int], np.ndarray]
"""``read(start, stop) -> [C, stop - start]``: a signal produced block by block (a :class:`Track`'s read, or a
gain applied to one on the fly)."""


def integrated_loudness(x: tp.Union[np.ndarray, Track], sr: int,
                        weights: tp.Optional[tp.Sequence[float]] = None) -> float:
    """ITU-R BS.1770-4 integrated loudness of ``x`` (``[N]`` or ``[C, N]``) in LUFS (K-weighting, 400 ms blocks
    with 75 % overlap, absolute gate -70 LUFS, relative gate -10 LU; channels summed with ``weights`` G: default
    1.0 for mono and the default layout's :func:`loudness_weights`), as ``pyloudnorm`` measures it (same filters,
    same block bounds; ``tests/test_mixing.py`` compares the two to 1e-9 LU) but block by block: the K-weighting
    filters carry their state from block to block and only each gating block's mean square is kept. Silence gives
    ``-inf``; audio shorter than one 400 ms block is measured as if it were repeated to one block's length."""
    t = Track.of(x)
    return _loudness(t.read, t.n, t.channels, sr, _weights(t, weights))


def _loudness(read: Reader, n: int, channels: int, sr: int, weights: np.ndarray) -> float:
    """:func:`integrated_loudness` of the signal ``read`` gives (``n`` samples of ``channels``)."""
    from vmas.dsp import lfilter

    block = int(math.ceil(0.4 * sr)) + 1
    if n == 0 or not any(bool(np.any(read(s, e))) for s, e in _spans(n)):
        return -math.inf
    if n < block:  # pyloudnorm needs one full block
        whole = np.tile(np.asarray(read(0, n)), (1, int(math.ceil(block / n))))
        n = whole.shape[1]
        read = lambda s, e: whole[:, s:e]  # noqa: E731
    filters = k_weighting(sr)
    t_g, step = LOUDNESS_BLOCK, 0.25
    count = int(np.round((n / sr - t_g) / (t_g * step))) + 1
    lo = np.array([int(t_g * (j * step) * sr) for j in range(count)])  # [J] block bounds, as pyloudnorm rounds them
    hi = np.minimum([int(t_g * (j * step + 1) * sr) for j in range(count)], n)
    bounds = np.unique(np.concatenate([lo, hi, [0, n]]))  # [S + 1]: the blocks are unions of these segments
    seg = np.zeros(bounds.size)  # seg[i]: weighted sum of squares of the filtered channels over the segment
    states = [[np.zeros(max(len(a), len(b)) - 1) for b, a in filters] for _ in range(channels)]
    for s, e in _spans(n):
        piece = read(s, e)
        energy = None
        for c in range(channels):
            if weights[c] == 0:
                continue
            y = np.asarray(piece[c], np.float64)
            for i, (b, a) in enumerate(filters):
                y, states[c][i] = lfilter(b, a, y, zi=states[c][i])
            yy = y * y if weights[c] == 1.0 else weights[c] * (y * y)
            energy = yy if energy is None else energy + yy
        if energy is None:
            energy = np.zeros(e - s)
        cuts = np.concatenate([[s], bounds[(bounds > s) & (bounds < e)]])  # [c] piece starts within the block
        np.add.at(seg, np.searchsorted(bounds, cuts, side="right") - 1, np.add.reduceat(energy, cuts - s))
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


def _oversampled_blocks(read: Reader, n: int, sr: int, block: tp.Optional[int] = None
                        ) -> tp.Iterator[tp.Tuple[int, np.ndarray, tp.List[np.ndarray]]]:
    """``(start, piece, [xo_c])`` for consecutive blocks of the signal ``read`` gives: ``piece [C, m]`` is the
    block itself and ``xo_c float64 [m * up]`` channel c's part of the whole signal oversampled
    :func:`oversample_factor` times (equal to one ``resample_poly`` call on the whole channel, to float rounding;
    memory: one block)."""
    from vmas.dsp import resample_poly

    up = oversample_factor(sr)
    for s, e in _spans(n, block):
        if up == 1:
            piece = read(s, e)
            yield s, piece, [np.asarray(row, np.float64) for row in piece]
            continue
        a, b = max(0, s - OVERSAMPLE_MARGIN), min(n, e + OVERSAMPLE_MARGIN)
        wide = read(a, b)
        xo = [resample_poly(np.asarray(row, np.float64), up, 1)[(s - a) * up: (e - a) * up] for row in wide]
        yield s, wide[:, s - a: e - a], xo


def true_peak(x: tp.Union[np.ndarray, Track], sr: int) -> float:
    """True peak of ``x`` (``[N]`` or ``[C, N]``) in dBTP: the largest magnitude of each channel oversampled to
    >= 192 kHz (4x at 48 kHz, 6x at 32 kHz) with a windowed-sinc interpolator, so peaks between samples count
    (BS.1770-4 Annex 2); the loudest channel's."""
    t = Track.of(x)
    return _true_peak(t.read, t.n, sr)


def _true_peak(read: Reader, n: int, sr: int) -> float:
    if n == 0:
        return -math.inf
    return gain_to_db(max(max(float(np.max(np.abs(xo))) for xo in rows)
                          for _, _, rows in _oversampled_blocks(read, n, sr)))


# ----------------------------------------------------------------------------------------------- voice activity
@functools.lru_cache(maxsize=1)
def _silero():
    import warnings

    from silero_vad import load_silero_vad

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice, not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        return load_silero_vad()


def speech_intervals(x: tp.Union[np.ndarray, Track], sr: int, threshold: float = 0.5, min_silence: float = 0.3,
                     min_speech: float = 0.25, pad: float = 0.03, layout: tp.Optional[tp.Sequence[str]] = None,
                     folder: tp.Optional[tp.Union[str, Path]] = None) -> tp.List[tp.Tuple[float, float]]:
    """Where someone speaks in ``x`` (``[N]`` or ``[C, N]`` at ``sr`` Hz): [(start, end)] in seconds, by Silero
    VAD (the JIT model in the ``silero-vad`` wheel) on the mono downmix (:func:`downmix_weights` of ``layout``,
    default by channel count), resampled to 16 kHz. Pauses shorter than ``min_silence`` do not split an interval;
    bursts shorter than ``min_speech`` are dropped; ``pad`` seconds are added on both sides.

    Window by window: the 16 kHz copy is made block by block (on disk with ``folder``) and the model keeps its
    state from one 32 ms window to the next, exactly as ``silero_vad.get_speech_timestamps`` runs over a whole
    signal; only the per-window probabilities are kept."""
    import torch
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    t = Track.of(x)
    if t.n < VAD_RATE // 10 or not t.any_nonzero():
        return []
    if t.channels > 1:
        w = downmix_weights(tuple(layout) if layout is not None else default_layout(t.channels))
        mono = Track.like(1, t.n, folder)
        for s, e in _spans(t.n):
            mono.write(s, w @ t.read(s, e).astype(np.float32))  # [C] @ [C, m] -> [m]
        t = mono
    x16 = _resample_into(t, sr, VAD_RATE, Track.like(1, round(t.n * VAD_RATE / sr), folder))
    model = _silero()
    model.reset_states()
    probs: tp.List[float] = []
    step = max(VAD_WINDOW, (BLOCK // VAD_WINDOW) * VAD_WINDOW)
    with torch.no_grad():
        for s in range(0, x16.n, step):
            piece = torch.from_numpy(np.ascontiguousarray(x16.read(s, s + step)[0], dtype=np.float32))
            for i in range(0, piece.numel(), VAD_WINDOW):
                chunk = piece[i: i + VAD_WINDOW]
                if chunk.numel() < VAD_WINDOW:
                    chunk = torch.nn.functional.pad(chunk, (0, VAD_WINDOW - chunk.numel()))
                probs.append(model(chunk, VAD_RATE).item())
        stamps = get_speech_timestamps_from_probs(probs, sampling_rate=VAD_RATE, threshold=threshold,
                                                  min_speech_duration_ms=int(min_speech * 1000),
                                                  min_silence_duration_ms=int(min_silence * 1000),
                                                  speech_pad_ms=int(pad * 1000), audio_length_samples=x16.n)
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


def apply_fades(x: tp.Union[np.ndarray, Track], sr: int, fade_in: float = 0.5,
                fade_out: float = 1.5) -> tp.Union[np.ndarray, Track]:
    """``x * fade_gain(...)`` in place on every channel (only the faded ends are touched); returns ``x``."""
    t = Track.of(x)
    ramp_in, ramp_out = _fade_ramps(t.n, sr, fade_in, fade_out)
    for start, ramp in ((0, ramp_in), (t.n - ramp_out.size, ramp_out)):
        if ramp.size:
            piece = t.read(start, start + ramp.size)
            if t.data is None:
                t.write(start, piece * ramp.astype(piece.dtype))
            else:
                piece *= ramp.astype(piece.dtype)  # a view of the array: in place
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


def _envelope_into(read: Reader, n: int, sr: int, out: Track) -> Track:
    """:func:`peak_envelope` of the signal ``read`` gives into ``out [1, n]``."""
    up = oversample_factor(sr)
    for s, piece, rows in _oversampled_blocks(read, n, sr):
        m = piece.shape[1]
        peak = None
        for c, xo in enumerate(rows):
            xo = np.abs(xo).reshape(m, up)  # [m, up]
            p = np.abs(np.asarray(piece[c], np.float64))
            for k in range(1, up):  # column by column: much faster than a max over a short last axis
                p = np.maximum(p, xo[:, k])
            peak = p if peak is None else np.maximum(peak, p)
        out.write(s, peak.astype(np.float32))
    return out


def peak_envelope(x: tp.Union[np.ndarray, Track], sr: int,
                  folder: tp.Optional[tp.Union[str, Path]] = None) -> tp.Union[np.ndarray, Track]:
    """``float32 [N]``: the largest magnitude of the oversampled (true-peak) signal from sample i to sample i+1,
    over all channels of ``x`` (``[N]`` or ``[C, N]``): one limiter gain for every channel keeps the image."""
    t = Track.of(x)
    env = _envelope_into(t.read, t.n, sr, Track.like(1, t.n, folder))
    return env if isinstance(x, Track) or folder is not None else env.array()[0]


def _limiter_into(peak: Track, sr: int, ceiling_db: float, stages: tp.Sequence[float], out: Track) -> Track:
    """:func:`limiter_gain` from the envelope ``peak [1, N]`` into ``out [1, N]``."""
    ceiling = float(db_to_gain(ceiling_db))
    widths = [max(1, int(round(seconds * sr))) for seconds in stages]
    margin = sum(widths) + 1
    for s, e in _spans(peak.n):
        a, b = max(0, s - margin), min(peak.n, e + margin)
        g = np.minimum(1.0, ceiling / np.maximum(np.asarray(peak.read(a, b)[0], np.float64), 1e-12))
        if g.min() >= 1.0:
            out.write(s, np.ones(e - s, np.float32))
            continue
        for w in widths:  # w ones in front, so the averages near the start also see the minima of the first samples
            g = _trailing_mean(_forward_min(np.concatenate([np.ones(w), g]), w), w)[w:]
        out.write(s, g[s - a: e - a].astype(np.float32))
    return out


def limiter_gain(x: tp.Union[np.ndarray, Track], sr: int, ceiling_db: float,
                 stages: tp.Sequence[float] = (0.001, 0.01), envelope: tp.Optional[tp.Any] = None,
                 folder: tp.Optional[tp.Union[str, Path]] = None) -> tp.Union[np.ndarray, Track]:
    """Look-ahead peak limiter: a smooth gain ``float32 [N] <= 1`` such that ``x * gain`` stays under
    ``ceiling_db`` at every oversampled (true) peak of every channel.

    Each stage takes, for every sample, the smallest gain needed over the next ``w`` seconds and averages that
    over the previous ``w`` seconds: the result is never above what any peak needs (each average includes the
    peak's own window) and ramps down over ``w`` seconds before the peak and up over ``w`` after it. A short stage
    then a longer one gives smooth, rounded ramps (1 + 10 ms by default: on a peaky voice a 40 ms release holds
    the gain down through whole syllables and costs ~4 dB more limiting for the same loudness). ``envelope`` is
    :func:`peak_envelope` of ``x`` when the caller already has it. A sample's gain depends only on the envelope
    within the stages' total width of it, so the curve is built block by block with that margin.
    """
    peak = Track.of(peak_envelope(x, sr, folder) if envelope is None else envelope)
    out = _limiter_into(peak, sr, ceiling_db, stages, Track.like(1, peak.n, folder))
    return out if isinstance(x, Track) or folder is not None else out.array()[0]


def _scaled(x: Track, gain: np.float32, limit: Track) -> Reader:
    """Reader of ``x * gain * limit`` in float32 (the operations, in the order, of the finished track)."""
    def read(s: int, e: int) -> np.ndarray:
        y = x.read(s, e).astype(np.float32)  # [C, m], a new array
        y *= gain
        y *= limit.read(s, e)
        return y
    return read


def normalize_loudness(x: tp.Union[np.ndarray, Track], sr: int, target: tp.Optional[float] = -14.0,
                       ceiling: float = -1.0, max_rounds: int = 12, tolerance: float = 0.05,
                       weights: tp.Optional[tp.Sequence[float]] = None,
                       folder: tp.Optional[tp.Union[str, Path]] = None) -> tp.Tuple[tp.Any, float, tp.Any]:
    """``x`` (``[N]`` or ``[C, N]``) at ``target`` LUFS integrated (BS.1770 channel ``weights``) with the true
    peak of every channel <= ``ceiling`` dBTP.

    Gain to target, then the limiter on what went over the ceiling. Limiting lowers the loudness, the more so the
    harder it works (a peaky voice raised by 10 dB gains only ~0.4 LU per dB), so the gain is updated by the
    secant method on the measured (gain, loudness) pairs until the loudness is within ``tolerance`` LU (2-5
    rounds). The gain stays within 12 dB of the plain gain, so a target the ceiling cannot allow (a very peaky
    track asked for -9 LUFS) ends at the closest loudness reached, which the caller can read back. With
    ``target=None`` (or silence) only the limiter runs. Each round's loudness is measured on the fly
    (``x * gain * limiter`` block by block); only the chosen round is written out (to ``folder`` when given).

    Returns ``(y float32, total gain in dB before limiting, limiter gain float32 [N])``.
    """
    t = Track.of(x)
    w = _weights(t, weights)
    margin = 0.05  # the limiter works on 4x samples of the input; the final check below catches the rest
    envelope = _envelope_into(t.read, t.n, sr, Track.like(1, t.n, folder))  # scales with the gain: computed once
    level = _loudness(t.read, t.n, t.channels, sr, w) if target is not None else -math.inf
    active = math.isfinite(level) and level > SILENCE_LUFS
    total_db, slope, prev = (target - level if active else 0.0), 1.0, (0.0, level)
    first_db = total_db

    best = None  # (miss in LU, total_db, limit): a target the ceiling makes unreachable ends at the closest
    for _ in range(max_rounds):
        # x * gain under the ceiling; each round's curve in its own track (the best one is kept)
        limit = _limiter_into(envelope, sr, ceiling - margin - total_db, (0.001, 0.01), Track.like(1, t.n, folder))
        if not active:
            best = (0.0, total_db, limit)
            break
        level = _loudness(_scaled(t, np.float32(db_to_gain(total_db)), limit), t.n, t.channels, sr, w)
        if best is None or abs(level - target) < best[0]:
            if best is not None:
                best[2].close()
            best = (abs(level - target), total_db, limit)
        else:
            limit.close()
        if abs(level - target) <= tolerance:
            break
        if total_db != prev[0]:
            slope = min(1.0, max(0.05, (level - prev[1]) / (total_db - prev[0])))
        prev = (total_db, level)
        # at most 12 dB past the plain gain: beyond that the limiter would flatten the track into a square wave
        total_db = min(total_db + float(np.clip((target - level) / slope, -12.0, 12.0)), first_db + 12.0)
    _, total_db, limit = best
    envelope.close()
    y = Track.like(t.channels, t.n, folder)
    read = _scaled(t, np.float32(db_to_gain(total_db)), limit)
    for s, e in _spans(t.n):
        y.write(s, read(s, e))
    over = true_peak(y, sr) - ceiling
    if over > 0:  # rare: an interpolated peak the per-sample limiter estimate missed by a few hundredths of a dB
        fix = np.float32(db_to_gain(-over - 1e-3))
        for s, e in _spans(t.n):
            y.write(s, y.read(s, e) * fix)
            limit.write(s, limit.read(s, e) * fix)
    if isinstance(x, Track) or folder is not None:
        return y, total_db, limit
    return _out(y, x), total_db, limit.array()[0]


# ----------------------------------------------------------------------------------------------- the whole chain
def finish_audio(music: tp.Union[np.ndarray, Track], music_sr: int, original: tp.Any = None,
                 original_sr: tp.Optional[int] = None, options: tp.Optional[MixOptions] = None,
                 headroom: float = 0.0, layout: tp.Optional[tp.Sequence[str]] = None,
                 folder: tp.Optional[tp.Union[str, Path]] = None) -> MixResult:
    """The finished track: generated mono ``music [N]`` at ``music_sr`` plus, unless ``options.mix ==
    "replace"``, the video's ``original`` audio (``[M]`` or ``[C, M]`` with channel names ``layout``, default by
    channel count) at ``original_sr`` (None = the video has no audio stream).

    With ``keep`` the track runs at ``original_sr`` for ``max(N, M)`` samples in the original's layout (the music
    is resampled, placed by :func:`music_placement` (+ ``width``) and starts at 0); with ``replace`` it is mono at
    ``music_sr`` for ``N`` samples. ``headroom`` dB are kept free under the true-peak ceiling for a lossy encoder
    after this step (AAC's decoded peaks overshoot the PCM's by up to ~0.5 dB). With ``folder`` every
    whole-length signal (resampled music, placed music, mix, envelope, limiter gain, result) is a float32
    :class:`Track` file there and the result's ``audio`` and ``music`` are Tracks; memory is then a few blocks.
    A mono original gives exactly what the mono-only chain gave (``tests/test_mixing.py`` holds its numbers).
    """
    opts = options or MixOptions()
    src = Track.of(music)
    if src.channels != 1:
        raise VmasError(f"music must be mono audio [N], got {src.channels} channels")
    mode = opts.resolve_mode(original is not None)
    if mode == "keep" and original is None:
        raise VmasError("--mix keep needs a video with an audio stream; this one has none (use --mix replace)")
    speech: tp.List[tp.Tuple[float, float]] = []
    original_loudness = None
    names: tp.Tuple[str, ...] = ("FC",)
    if mode == "keep":
        if original_sr is None:
            raise VmasError("finish_audio: original_sr is required with the original audio")
        sr = int(original_sr)
        orig = Track.of(original)
        names = tuple(layout) if layout is not None else (("FC",) if orig.channels == 1
                                                            else default_layout(orig.channels))
        if len(names) != orig.channels:
            raise VmasError(f"layout {names} names {len(names)} channels, the original audio has {orig.channels}")
        weights = loudness_weights(names) if orig.channels > 1 else np.ones(1)
        stem = _resample_into(src, music_sr, sr, Track.like(1, round(src.n * sr / music_sr), folder))  # [1, N']
        n = max(orig.n, stem.n)
        original_loudness = _loudness(orig.read, orig.n, orig.channels, sr, weights)
        place = music_placement(names)
        pair = _width_pair(names) if opts.width > 0 else None
        delay = max(1, round(WIDEN_DELAY * sr)) if pair else 0

        def placed(s: int, e: int, gain: np.float32, duck: bool, side: bool = True) -> np.ndarray:
            """The music in the layout for samples [s, e): ``[C, e - s]`` float32 (``side``: with the widening)."""
            a = max(0, s - delay)
            m = stem.read(a, e)[0].astype(np.float32)  # [e - a], zeros past the music's end
            m *= gain
            if duck:
                m *= ducking_gain(speech, n, sr, opts.duck, opts.attack, opts.release, opts.hold,
                                  start=a, stop=e).astype(np.float32)
            centre = m[s - a:]
            if orig.channels == 1:
                return centre[None]
            out = place.astype(np.float32)[:, None] * centre  # [C, e - s]
            if pair and side:  # mid/side: +side in L, -side in R, so (L + R) / 2 is the centred music
                side = np.concatenate([np.zeros(delay - (s - a), np.float32), m])[: e - s]
                side *= np.float32(opts.width * place[pair[0]])
                out[pair[0]] += side
                out[pair[1]] -= side
            return out

        if orig.channels == 1:
            level = integrated_loudness(stem, sr)  # measured without the fades
        else:
            # the centred music's loudness: widening then adds only the side signal (the fold-down is unchanged)
            level = _loudness(lambda s, e: placed(s, e, np.float32(1.0), False, False), stem.n, orig.channels, sr,
                              weights)
        apply_fades(stem, sr, opts.fade_in, opts.fade_out)
        gain = db_to_gain(opts.music_gain)
        if math.isfinite(level) and original_loudness > SILENCE_LUFS:  # music at the original's loudness
            gain = gain * db_to_gain(original_loudness - level)
        if opts.duck != 0:
            speech = speech_intervals(orig, sr, threshold=opts.vad_threshold, layout=names, folder=folder)
        music_track = Track.like(orig.channels, n, folder)
        mix = Track.like(orig.channels, n, folder)
        for s, e in _spans(n):
            part = placed(s, e, np.float32(gain), opts.duck != 0)
            music_track.write(s, part)
            block = orig.read(s, e).astype(np.float32)  # [C, e - s], a new array
            block += part
            mix.write(s, block)
        stem.close()
    else:
        sr = int(music_sr)
        weights = np.ones(1)
        music_track = Track.like(1, src.n, folder)
        for s, e in _spans(src.n):
            music_track.write(s, src.read(s, e).astype(np.float32))
        apply_fades(music_track, sr, opts.fade_in, opts.fade_out)
        mix = music_track  # the music alone at its generated level (music_gain is relative to an absent original)
    out, gain_db, limit = normalize_loudness(mix, sr, opts.loudness, opts.true_peak - abs(headroom),
                                             weights=weights, folder=folder)
    if mix is not music_track:
        mix.close()
    limit = Track.of(limit)
    g = np.float32(db_to_gain(gain_db))
    for s, e in _spans(music_track.n):
        block = music_track.read(s, e) * g
        block *= limit.read(s, e)
        music_track.write(s, block)
    out = Track.of(out)
    disk = folder is not None
    return MixResult(audio=out if disk else _out(out, None), sample_rate=sr,
                     music=music_track if disk else _out(music_track, None), mode=mode, speech=speech,
                     gain_db=float(gain_db), loudness=_loudness(out.read, out.n, out.channels, sr, weights),
                     true_peak=true_peak(out, sr), original_loudness=original_loudness, layout=names)


def encode_within_ceiling(audio: tp.Union[np.ndarray, Track], sr: int, ceiling: float,
                          encode: tp.Callable[[tp.Any], tp.Any], tries: int = 3,
                          folder: tp.Optional[tp.Union[str, Path]] = None) -> tp.Tuple[tp.Any, tp.Any]:
    """Write ``audio`` (``[N]``, ``[C, N]`` or a Track) with a lossy encoder and keep the *decoded* true peak
    (every channel's) under ``ceiling`` dBTP.

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
        t = Track.of(audio)
        limit = Track.of(limiter_gain(t, sr, true_peak(t, sr) - over - 0.05, folder=folder))
        y = Track.like(t.channels, t.n, folder)
        for s, e in _spans(t.n):
            y.write(s, (t.read(s, e) * limit.read(s, e)).astype(np.float32))
        limit.close()
        audio = y if isinstance(audio, Track) else _out(y, None)
        decoded = encode(audio)
    return audio, decoded


__all__ = ["MixOptions", "MixResult", "MIX_MODES", "Track", "finish_audio", "speech_intervals", "ducking_gain",
           "fade_gain", "integrated_loudness", "true_peak", "peak_envelope", "limiter_gain", "normalize_loudness",
           "encode_within_ceiling", "resample", "db_to_gain", "apply_fades", "downmix_weights", "stereo_downmix",
           "loudness_weights", "music_placement", "default_layout"]
