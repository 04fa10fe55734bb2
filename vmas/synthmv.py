"""SynthMV: synthetic music videos whose music is learnably tied to the picture.

    python -m vmas.synthmv --out data/synthmv/train --num 100 --seed 0   (any folder; datasets.synthmv: repo root only)
    python -m vmas.synthmv --out data/synthmv/val --num 20 --seed 1 --split val
    python -m vmas.synthmv --out data/synthmv/scenes --num 6 --seed 2 --scenes 3 --seconds 30   (cuts)

Each clip is a real mp4 (H.264 video + AAC audio, 32 kHz mono) plus a labels JSON beside it, and the folder gets
an index ``manifest.jsonl`` (one line per clip). Two kinds of link between video and music:

- **high level**: the scene class (background palette + shape) picks the instrument (timbre), the key/mode and
  the tempo family; the tempo itself is drawn inside the family and written as a tag (``"84 BPM"``), so a
  requested tempo is learnable;
- **low level**: every note onset is a visual event and every visual event is a note onset: the shape *jumps*
  on each note (its height follows the pitch), the frame *flashes* on each bar's downbeat, and the scene *cuts*
  (palette variant swaps) every two bars.

Timing: video is rendered at **25 fps** so that every video frame lies on the 50 Hz music-code grid
(frame ``k`` = code frame ``2k``). Note onsets are placed on video frames, i.e. at multiples of 40 ms: a musical
time ``t`` is rounded to the nearest frame, so a note may move by at most 20 ms (one code frame) from the exact
metronome grid, and the onset in the audio is at exactly sample ``round(t * sr)`` of that frame time. (9.6 fps and
50 Hz only share a grid every 2.5 s, so events cannot lie on both; the 9.6 fps model input sees flashes through
their 60 ms decay and jumps/cuts because they persist until the next event.)

Everything is procedural numpy synthesis (no network, no soundfont) and deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import typing as tp
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

FPS = 25
"""Video frame rate: every frame is on the 50 Hz code grid (one frame = two code frames)."""
SAMPLE_RATE = 32000
CODE_RATE = 50
NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10]}


@dataclass(frozen=True)
class SynthClass:
    """One scene class: what it looks like and what it sounds like."""

    name: str
    shape: str
    palette: tp.Tuple[tp.Tuple[int, int, int], tp.Tuple[int, int, int], tp.Tuple[int, int, int]]
    """(background top, background bottom, shape colour); the 'cut' variant swaps the two background colours."""
    instrument: str
    """Synthesis recipe, one of :data:`INSTRUMENTS`."""
    instrument_tag: str
    root: int
    """Key root as a MIDI note (octave where the melody lives)."""
    mode: str
    tempo_family: str
    tempo_range: tp.Tuple[float, float]
    offbeat_prob: float
    """Chance that an off-beat eighth note gets a note (and a jump)."""
    moods: tp.Tuple[str, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        return f"{NOTE_NAMES[self.root % 12]} {self.mode}"


CLASSES: tp.Tuple[SynthClass, ...] = (
    SynthClass("sunset_circle", "circle", ((250, 140, 60), (120, 40, 90), (255, 230, 120)), "pluck",
               "acoustic guitar", 57, "minor", "slow", (68.0, 84.0), 0.35, ("warm", "calm", "acoustic")),
    SynthClass("ocean_square", "square", ((30, 90, 170), (10, 30, 70), (200, 240, 255)), "bell",
               "bells", 74, "major", "medium", (88.0, 104.0), 0.25, ("dreamy", "bright", "peaceful")),
    SynthClass("neon_triangle", "triangle", ((40, 0, 60), (0, 0, 0), (0, 255, 180)), "square",
               "synth lead", 64, "minor", "fast", (124.0, 140.0), 0.5, ("energetic", "electronic", "dance")),
    SynthClass("forest_diamond", "diamond", ((40, 110, 50), (10, 50, 20), (240, 200, 90)), "organ",
               "organ", 55, "major", "medium", (92.0, 108.0), 0.2, ("gentle", "warm", "hymn")),
    SynthClass("night_ring", "ring", ((20, 20, 60), (60, 10, 20), (220, 60, 60)), "brass",
               "synth brass", 48, "minor", "medium", (100.0, 116.0), 0.3, ("dark", "dramatic", "cinematic")),
    SynthClass("candy_cross", "cross", ((255, 190, 220), (160, 220, 255), (120, 40, 160)), "marimba",
               "marimba", 65, "major", "fast", (132.0, 148.0), 0.45, ("playful", "happy", "upbeat")),
)
INSTRUMENTS = ("pluck", "bell", "square", "organ", "brass", "marimba")
CLASS_BY_NAME = {c.name: i for i, c in enumerate(CLASSES)}


# ------------------------------------------------------------------------------------------------ the score
RHYTHMS = ("steady", "irregular")
"""``steady``: notes on a metronome grid (the default; the published SynthMV results use it). ``irregular``: note
times from a renewal process, so the next onset cannot be predicted from the music so far (issue 17)."""
REFRACTORY_FRAMES = 4
"""Irregular rhythm: the shortest gap between onsets, 160 ms at 25 fps. The encoder samples the picture every
104 ms (9.6 fps), so at least one model frame lies between any two events and every jump is seen."""


def _steady_onsets(rng: np.random.Generator, c: SynthClass, beat: float, first: float, last_ok: float
                   ) -> tp.Iterator[tp.Tuple[int, bool, bool]]:
    """Metronome onsets as (25 fps frame, accent, cut): a note on every beat and on each off-beat eighth with the
    class's probability; an accent (flash) on each bar's downbeat, a cut every second bar after the first.

    A generator, so the caller's per-note draws from the same ``rng`` interleave with these exactly as they did
    before the rhythm option existed (the steady datasets stay byte-identical).
    """
    prev_frame = -10
    n_eighths = int((last_ok - first) / (beat / 2)) + 1
    for e in range(n_eighths):
        on_beat = e % 2 == 0
        if not on_beat and rng.random() >= c.offbeat_prob:
            continue
        frame = round((first + e * beat / 2) * FPS)
        if frame / FPS > last_ok or frame - prev_frame < 4:  # keep onsets >= 160 ms apart after rounding
            continue
        bar, beat_in_bar = divmod(e // 2, 4)
        downbeat = on_beat and beat_in_bar == 0
        yield frame, downbeat, downbeat and bar > 0 and bar % 2 == 0
        prev_frame = frame


def _irregular_onsets(rng: np.random.Generator, c: SynthClass, beat: float, first: float, last_ok: float
                      ) -> tp.Iterator[tp.Tuple[int, bool, bool]]:
    """Renewal-process onsets as (25 fps frame, accent, cut).

    Gap = :data:`REFRACTORY_FRAMES` + a geometric number of frames, i.e. memoryless after the refractory gap: the
    music so far says nothing about when the next note comes, only the picture does. The mean gap equals the
    steady mode's mean note spacing for the class and tempo (``beat / (1 + offbeat_prob)``), so note density and
    every class cue stay as in the steady mode. Accents (flash) fall on a random quarter of the notes; half of
    the accents also cut the scene.
    """
    mean_gap = beat / (1.0 + c.offbeat_prob) * FPS  # frames
    p = 1.0 / max(1.0, mean_gap - REFRACTORY_FRAMES + 1)  # geometric on {1, 2, ...} with mean 1/p
    frame = round(first * FPS)
    while frame / FPS <= last_ok:
        accent = bool(rng.random() < 0.25)
        yield frame, accent, accent and bool(rng.random() < 0.5)
        frame += REFRACTORY_FRAMES - 1 + int(rng.geometric(p))


def plan_clip(seed: int, cls: int, seconds: float = 10.0, tempo: tp.Optional[float] = None,
              rhythm: str = "steady") -> dict:
    """Draw the music and the matching visual events of one clip (no rendering): the labels dictionary.

    Onsets (rounded to the 25 fps frame grid) follow ``rhythm`` (see :data:`RHYTHMS`). Events: every note is a
    ``jump``; accents (steady: a bar's downbeat) add ``flash``; some accents (steady: every second bar after the
    first) add ``cut``. The labels keep every event's time, frame and code frame.
    """
    if rhythm not in RHYTHMS:
        raise ValueError(f"unknown rhythm {rhythm!r}; choose from {RHYTHMS}")
    c = CLASSES[cls]
    rng = np.random.default_rng([seed, cls, 7919])
    bpm = float(tempo) if tempo is not None else float(rng.uniform(*c.tempo_range))
    beat = 60.0 / bpm
    scale = SCALES[c.mode]
    first = (int(rng.integers(4, 13))) / FPS  # 0.16-0.48 s: librosa cannot see an onset at t = 0
    last_ok = seconds - 0.35  # leave room for the last note to sound
    onsets = (_steady_onsets if rhythm == "steady" else _irregular_onsets)(rng, c, beat, first, last_ok)
    events: tp.List[dict] = []
    degree = 0  # scale degree of the melody (random walk)
    for frame, accent, cut in onsets:
        degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2, 0], p=[0.15, 0.3, 0.3, 0.15, 0.1]), -3, 9))
        octave, step = divmod(degree, 7)
        pitch = c.root + 12 * octave + scale[step]
        types = ["jump"] + (["flash"] if accent else []) + (["cut"] if cut else [])
        events.append({"time": frame / FPS, "frame": frame, "code_frame": 2 * frame, "pitch": int(pitch),
                       "degree": degree, "types": types, "velocity": 1.0 if "flash" in types else 0.75})
    return {
        "seed": int(seed), "class_id": int(cls), "class_name": c.name, "shape": c.shape,
        "instrument": c.instrument, "instrument_tag": c.instrument_tag, "key": c.key, "mode": c.mode,
        "tempo_bpm": round(bpm, 2), "tempo_family": c.tempo_family, "rhythm": rhythm, "seconds": float(seconds),
        "fps": FPS, "sample_rate": SAMPLE_RATE, "code_rate": CODE_RATE, "events": events,
        "onsets": [ev["time"] for ev in events], "tags": make_tags(c, bpm),
    }


def make_tags(c: SynthClass, bpm: float) -> str:
    """Comma-separated tags (issue 11 format): instrument, mood/family words, tempo as ``N BPM``."""
    tempo_word = {"slow": "slow tempo", "medium": "medium tempo", "fast": "fast tempo"}[c.tempo_family]
    return ", ".join([c.instrument_tag, *c.moods, c.mode, tempo_word, f"{round(bpm)} BPM"])


# -------------------------------------------------------------------------------------------------- audio
def midi_hz(p: float) -> float:
    return 440.0 * 2.0 ** ((p - 69) / 12)


def _adsr(n: int, gate: int, sr: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """Piecewise envelope [n]: linear attack, exponential decay to ``sustain`` until ``gate``, then release."""
    t = np.arange(n) / sr
    env = sustain + (1 - sustain) * np.exp(-np.maximum(t - attack, 0) / max(decay, 1e-4))
    env = np.where(t < attack, t / max(attack, 1e-4), env)
    g = gate / sr
    # raised-cosine release: a linear ramp's corner splatters energy across the spectrum, which onset detectors
    # (positive spectral flux) read as a note
    rel = 0.5 * (1 + np.cos(np.pi * np.clip((t - g) / release, 0, 1)))
    return np.where(t < g, env, env[min(gate, n - 1)] * rel)


def _wavetable(f0: float, t: np.ndarray, partials: tp.Sequence[tp.Tuple[int, float]], size: int = 4096
               ) -> np.ndarray:
    """Periodic waveform with harmonic ``partials`` [(k, amp)] at ``f0``: one period summed once, then read with
    linear interpolation (an additive sum over every sample costs ~50x more for bright sounds)."""
    phase = np.arange(size + 1) / size
    table = sum(a * np.sin(2 * np.pi * k * phase) for k, a in partials)
    return np.interp((f0 * t) % 1.0, phase, table)


def synth_note(instrument: str, pitch: int, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One note of ``length`` samples (the time until the next onset; tails are cut there, which keeps every
    onset a clean attack). Peak-normalised to 1."""
    f0 = midi_hz(pitch)
    t = np.arange(length) / sr
    if instrument == "pluck":  # Karplus-Strong: noise burst through a damped comb + 2-tap average
        period = max(2, int(round(sr / f0)))
        burst = np.zeros(length)
        burst[:period] = lfilter([0.5, 0.5], [1.0], rng.uniform(-1, 1, period))
        a = np.zeros(period + 2)
        a[0], a[period], a[period + 1] = 1.0, -0.497, -0.497
        x = lfilter([1.0], a, burst)
    elif instrument == "bell":  # inharmonic partials, each with its own exponential decay
        ratios, amps, taus = (1.0, 2.0, 2.76, 5.4, 8.93), (1.0, 0.5, 0.6, 0.25, 0.15), (1.2, 0.8, 0.5, 0.25, 0.12)
        x = sum(a * np.exp(-t / tau) * np.sin(2 * np.pi * f0 * r * t) for r, a, tau in zip(ratios, amps, taus))
        x = x * np.minimum(t / 0.002, 1)
    elif instrument == "square":  # band-limited square (odd harmonics below 12 kHz), ADSR
        x = _wavetable(f0, t, [(k, 1.0 / k) for k in range(1, 40, 2) if k * f0 < 12000])
        x = x * _adsr(length, int(0.75 * length), sr, 0.004, 0.08, 0.6, 0.08)
    elif instrument == "organ":  # 2-operator FM (ratio 2) plus an octave drawbar, organ-like sustain
        x = np.sin(2 * np.pi * f0 * t + 1.5 * np.sin(2 * np.pi * 2 * f0 * t)) + 0.4 * np.sin(2 * np.pi * 2 * f0 * t)
        x = x * _adsr(length, int(0.7 * length), sr, 0.006, 0.05, 0.85, 0.12)
    elif instrument == "brass":  # sawtooth through a one-pole low-pass, fast attack
        saw = _wavetable(f0, t, [(k, 1.0 / k) for k in range(1, 60) if k * f0 < 12000])
        alpha = np.exp(-2 * np.pi * 2500 / sr)
        x = lfilter([1 - alpha], [1, -alpha], saw) * _adsr(length, int(0.7 * length), sr, 0.008, 0.15, 0.7, 0.12)
    elif instrument == "marimba":  # fundamental + 4th/10th partials that die fast: wooden bar
        x = (np.sin(2 * np.pi * f0 * t) * np.exp(-t / 0.35) + 0.35 * np.sin(2 * np.pi * 4 * f0 * t) * np.exp(-t / 0.05)
             + 0.1 * np.sin(2 * np.pi * 10 * f0 * t) * np.exp(-t / 0.015))
        x = x * np.minimum(t / 0.001, 1)
    else:
        raise ValueError(f"unknown instrument {instrument!r}; choose from {INSTRUMENTS}")
    fade = min(length, int(0.01 * sr))  # 10 ms fade at the cut so the next attack is the only onset
    x = np.asarray(x, np.float64)
    x[length - fade:] *= np.linspace(1, 0, fade)
    return x / max(1e-9, np.abs(x).max())


def render_audio(labels: dict, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 [round(seconds * sr)]: every event's note starts at exactly sample ``round(time * sr)``."""
    n = round(labels["seconds"] * sr)
    out = np.zeros(n)
    rng = np.random.default_rng([labels["seed"], labels["class_id"], 104729])
    events = labels["events"]
    for i, ev in enumerate(events):
        s = round(ev["time"] * sr)
        # the last note ends 50 ms before the clip does, so the clip's end is silence, not a cut-off note
        e = round(events[i + 1]["time"] * sr) if i + 1 < len(events) else min(n - round(0.05 * sr), s + sr)
        out[s:e] += ev["velocity"] * synth_note(labels["instrument"], ev["pitch"], e - s, sr, rng)
    return (0.5 * out / max(1e-9, np.abs(out).max())).astype(np.float32)


# -------------------------------------------------------------------------------------------------- video
def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` with radius ``r`` given pixel offsets from its centre (y grows downwards)."""
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "triangle":
        return (dy <= 0.8 * r) & (dy >= -r) & (np.abs(dx) <= 0.6 * (dy + r))
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "ring":
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        return ((np.abs(dx) <= 0.35 * r) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 0.35 * r) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


FLASH_GAIN, FLASH_TAU = 0.7, 0.06
"""A flash lifts every pixel towards white by 0.7 and decays with a 60 ms time constant."""


def render_video(labels: dict, size: int = 64, style: tp.Optional[tp.Tuple[str, tp.Sequence]] = None) -> np.ndarray:
    """uint8 [round(seconds * 25), size, size, 3]: frame k shows time k/25; an event at frame k changes frame k.

    ``style``: (shape, palette) drawn instead of the SynthMV class's own; the real-music testbed
    (``datasets.realmusic_mv``, issue 32) gives each soundtrack its own look and reuses this renderer."""
    shape, palette = style if style is not None else (CLASSES[labels["class_id"]].shape,
                                                      CLASSES[labels["class_id"]].palette)
    n = round(labels["seconds"] * FPS)
    rng = np.random.default_rng([labels["seed"], labels["class_id"], 15485863])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    top, bottom, fg = (np.array(col, np.float64) for col in palette)
    grad = (yy / size)[..., None]
    backgrounds = [top * (1 - grad) + bottom * grad, bottom * (1 - grad) + top * grad]  # [size, size, 3] each
    r = 0.14 * size
    degrees = [ev["degree"] for ev in labels["events"]] or [0]
    lo, hi = min(degrees) - 1, max(degrees) + 1
    # state that changes only at events; x is random, y follows the pitch (higher note = higher on screen)
    by_frame = {ev["frame"]: ev for ev in labels["events"]}
    cx, cy, variant, flash_at = 0.5 * size, 0.5 * size, 0, None
    frames = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        ev = by_frame.get(k)
        if ev is not None:
            # a jump always moves the shape by >= 2 radii horizontally (old and new place do not overlap), so it
            # is a large frame change whatever the pitch
            left, right = max(0.0, cx - 2 * r - (r + 1)), max(0.0, (size - r - 1) - (cx + 2 * r))
            u = float(rng.uniform(0, left + right))
            cx = (r + 1) + u if u < left else cx + 2 * r + (u - left)
            cy = (size - r - 1) - (ev["degree"] - lo) / (hi - lo) * (size - 2 * r - 2)
            if "cut" in ev["types"]:
                variant = 1 - variant
            if "flash" in ev["types"]:
                flash_at = k
        # the picture changes only at events (plus a flash's decay): motion peaks are exactly the note onsets
        img = backgrounds[variant].copy()
        img[_shape_mask(shape, xx - cx, yy - cy, r)] = fg if variant == 0 else 255 - fg
        if flash_at is not None:
            g = FLASH_GAIN * np.exp(-(k - flash_at) / FPS / FLASH_TAU)
            img = img + (255 - img) * g
        frames[k] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return frames


# ------------------------------------------------------------------------------------------------- writing
def write_mp4(path: tp.Union[str, Path], frames: np.ndarray, wav: np.ndarray, fps: int = FPS,
              sr: int = SAMPLE_RATE, crf: int = 18, audio_bitrate: int = 96_000) -> Path:
    """H.264 (yuv420p, one thread so the bytes are deterministic) + AAC mono, muxed in time order."""
    import av

    path = Path(path)
    T, H, W, _ = frames.shape
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.codec_context.thread_count = 1
        vs.codec_context.gop_size = 2 * fps  # a keyframe every 2 s keeps random access cheap
        aus = out.add_stream("aac", rate=sr, layout="mono", options={"aac_coder": "fast"})
        aus.bit_rate = audio_bitrate
        packets = []
        for k in range(T):
            vf = av.VideoFrame.from_ndarray(frames[k], format="rgb24")
            vf.pts, vf.time_base = k, Fraction(1, fps)
            packets += [(float(p.dts * p.time_base), 0, p) for p in vs.encode(vf)]
        packets += [(float(p.dts * p.time_base), 0, p) for p in vs.encode(None)]
        for i in range(0, wav.size, 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[None, i:i + 1024]), format="fltp", layout="mono")
            af.sample_rate, af.pts = sr, i
            packets += [(float(p.dts * p.time_base), 1, p) for p in aus.encode(af)]
        packets += [(float(p.dts * p.time_base), 1, p) for p in aus.encode(None)]
        for _, _, p in sorted(packets, key=lambda q: (q[0], q[1])):
            out.mux(p)
    tmp.replace(path)
    return path


@dataclass
class SynthClip:
    frames: np.ndarray
    """uint8 [T, size, size, 3] at 25 fps."""
    wav: np.ndarray
    """float32 [N] at 32 kHz."""
    labels: dict


def generate_clip(seed: int, cls: tp.Optional[int] = None, seconds: float = 10.0, size: int = 64,
                  tempo: tp.Optional[float] = None, out_path: tp.Union[str, Path, None] = None,
                  write_wav: bool = False, rhythm: str = "steady") -> SynthClip:
    """Render one clip. ``cls`` None draws the class from the seed; ``tempo`` overrides the drawn BPM.

    With ``out_path`` (``.mp4``), writes the mp4 and ``<stem>.json`` labels beside it (and ``<stem>.wav`` with
    ``write_wav``: the uncompressed audio, e.g. for codec training).
    """
    if size % 2:
        raise ValueError(f"size must be even for H.264 4:2:0, got {size}")
    if cls is None:
        cls = int(np.random.default_rng([seed, 31]).integers(len(CLASSES)))
    labels = plan_clip(seed, cls, seconds, tempo, rhythm)
    labels["size"] = size
    wav = render_audio(labels)
    frames = render_video(labels, size)
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(out_path, frames, wav)
        labels["file"] = out_path.name
        out_path.with_suffix(".json").write_text(json.dumps(labels, indent=1))
        if write_wav:
            from vmas.data.media import write_wav as _write_wav

            _write_wav(out_path.with_suffix(".wav"), wav, SAMPLE_RATE)
    return SynthClip(frames=frames, wav=wav, labels=labels)


# ------------------------------------------------------------------------------------- multi-scene videos
MIN_SCENE_SECONDS = 2.0
"""Shortest scene of a multi-scene clip: long enough for a few notes, so each segment's class can be heard."""


def plan_scenes(seed: int, scenes: int, seconds: float, classes: tp.Optional[tp.Sequence[int]] = None
                ) -> tp.Tuple[tp.List[float], tp.List[int]]:
    """(cut times s, class of each scene) of a multi-scene clip (issue 22).

    Cuts lie on the 25 fps frame grid (so on the 50 Hz code grid and on whole audio samples too); scene lengths are
    ``seconds / scenes`` jittered by up to +-30 % and at least :data:`MIN_SCENE_SECONDS`. Consecutive scenes
    always have different classes (a cut that keeps the class would not be a musical section change).
    """
    if scenes < 1 or seconds < scenes * MIN_SCENE_SECONDS:
        raise ValueError(f"{scenes} scenes need at least {scenes * MIN_SCENE_SECONDS:g} s, got {seconds:g} s")
    rng = np.random.default_rng([seed, scenes, 6700417])
    base = seconds / scenes
    cuts: tp.List[float] = []
    for i in range(1, scenes):
        lo = max((cuts[-1] if cuts else 0.0) + MIN_SCENE_SECONDS, i * base - 0.3 * base)
        hi = min(seconds - (scenes - i) * MIN_SCENE_SECONDS, i * base + 0.3 * base)
        cuts.append(round(float(rng.uniform(lo, max(lo, hi))) * FPS) / FPS)
    if classes is None:
        classes = [int(rng.integers(len(CLASSES)))]
        for _ in range(1, scenes):
            classes.append(int((classes[-1] + rng.integers(1, len(CLASSES))) % len(CLASSES)))
    if len(classes) != scenes:
        raise ValueError(f"need one class per scene ({scenes}), got {len(classes)}")
    return cuts, [int(c) for c in classes]


def generate_multiscene(seed: int, scenes: int = 3, seconds: float = 30.0, size: int = 64,
                        classes: tp.Optional[tp.Sequence[int]] = None, out_path: tp.Union[str, Path, None] = None,
                        rhythm: str = "steady") -> SynthClip:
    """A clip of ``scenes`` SynthMV scenes joined by hard cuts: picture and music change class at each cut.

    Each scene is an ordinary SynthMV clip of its own length (own class, tempo and seed, rendered by
    :func:`generate_clip`), so within a scene every SynthMV property holds; the labels add ``cuts`` (s) and
    ``segments`` ([{start, end, class_id, class_name, tempo_bpm}]), shift every event to the whole clip's time,
    and keep ``class_id`` / ``tags`` of the first scene for tools that expect one class per clip.
    """
    cuts, classes = plan_scenes(seed, scenes, seconds, classes)
    bounds = [0.0, *cuts, float(seconds)]
    frames, wavs, events, segments = [], [], [], []
    for i, cls in enumerate(classes):
        start, end = bounds[i], bounds[i + 1]
        part = generate_clip(clip_seed(seed, 1000 + i), cls, end - start, size, rhythm=rhythm)
        frames.append(part.frames[: round((end - start) * FPS)])
        wavs.append(part.wav[: round((end - start) * SAMPLE_RATE)])
        f0 = round(start * FPS)
        events += [dict(ev, time=round(ev["time"] + start, 6), frame=ev["frame"] + f0,
                        code_frame=ev["code_frame"] + 2 * f0, scene=i) for ev in part.labels["events"]]
        segments.append({"start": start, "end": end, "class_id": cls, "class_name": CLASSES[cls].name,
                         "tempo_bpm": part.labels["tempo_bpm"], "tags": part.labels["tags"]})
    first = segments[0]
    c0 = CLASSES[first["class_id"]]
    labels = {"seed": int(seed), "class_id": first["class_id"], "class_name": first["class_name"],
              "instrument": c0.instrument, "key": c0.key, "tempo_bpm": first["tempo_bpm"], "tags": first["tags"], "rhythm": rhythm, "seconds": float(seconds),
              "fps": FPS, "sample_rate": SAMPLE_RATE, "code_rate": CODE_RATE, "size": size, "scenes": scenes,
              "cuts": cuts, "segments": segments, "events": events, "onsets": [ev["time"] for ev in events]}
    clip = SynthClip(frames=np.concatenate(frames), wav=np.concatenate(wavs).astype(np.float32), labels=labels)
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(out_path, clip.frames, clip.wav)
        labels["file"] = out_path.name
        out_path.with_suffix(".json").write_text(json.dumps(labels, indent=1))
    return clip


# ----------------------------------------------------------------------------------------------- classifier
def audio_features(wav: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Timbre/pitch profile of a clip, float32 [80]: mean and std over time of a 40-band log-mel spectrogram.

    Level-normalised (the mean over bands is removed), so loudness does not decide the class."""
    import librosa

    wav = np.asarray(wav, np.float32).reshape(-1)
    if sr != SAMPLE_RATE:
        wav = librosa.resample(wav, orig_sr=sr, target_sr=SAMPLE_RATE)
    mel = librosa.feature.melspectrogram(y=wav, sr=SAMPLE_RATE, n_fft=1024, hop_length=640, n_mels=40)
    logmel = np.log(mel + 1e-6)  # [40, frames]
    mean, std = logmel.mean(axis=1), logmel.std(axis=1)
    return np.concatenate([mean - mean.mean(), std]).astype(np.float32)


class SynthMVClassifier:
    """Which SynthMV class does a piece of music sound like? k-nearest neighbours (k = 5) on standardised
    :func:`audio_features`.

    This is the "simple classifier trained on real SynthMV audio" that the end-to-end and tag-control benchmarks
    use to judge generated music (class = instrument + key + tempo family). :meth:`train_default` renders clips
    and adds copies with white noise at 30/20/10 dB SNR, because generated music is noisier than the renders; a
    single centroid per class cannot cover clean and noisy versions at once (tested: centroids drop to 17 %
    accuracy under noise that kNN survives at 78 %).
    """

    def __init__(self, k: int = 5):
        self.k = k
        self.mean = self.std = self.feats = self.labels = None  # [D], [D], [N, D], [N]

    def fit(self, wavs: tp.Sequence[np.ndarray], labels: tp.Sequence[int], sr: int = SAMPLE_RATE
            ) -> "SynthMVClassifier":
        feats = np.stack([audio_features(w, sr) for w in wavs])  # [N, D]
        self.mean, self.std = feats.mean(axis=0), feats.std(axis=0) + 1e-3
        self.feats, self.labels = (feats - self.mean) / self.std, np.asarray(labels, np.int64)
        return self

    def scores(self, wavs: tp.Sequence[np.ndarray], sr: int = SAMPLE_RATE) -> np.ndarray:
        """Share of the k nearest training clips in each class, [N, C] (ties broken towards the nearest)."""
        if self.feats is None:
            raise RuntimeError("SynthMVClassifier: call fit(), train_default() or load() first")
        z = (np.stack([audio_features(w, sr) for w in wavs]) - self.mean) / self.std  # [N, D]
        dist = np.linalg.norm(z[:, None] - self.feats[None], axis=-1)  # [N, M]
        order = np.argsort(dist, axis=1)[:, : self.k]  # [N, k]
        votes = np.zeros((len(z), len(CLASSES)))
        for rank in range(order.shape[1]):  # earlier (nearer) neighbours get a tiny tie-breaking bonus
            np.add.at(votes, (np.arange(len(z)), self.labels[order[:, rank]]), 1.0 + 1e-3 * (self.k - rank))
        return votes / votes.sum(axis=1, keepdims=True)

    def predict(self, wavs: tp.Sequence[np.ndarray], sr: int = SAMPLE_RATE) -> np.ndarray:
        return self.scores(wavs, sr).argmax(axis=1)

    @classmethod
    def train_default(cls, per_class: int = 8, seconds: float = 10.0, seed: int = 12345,
                      snrs_db: tp.Sequence[float] = (30.0, 20.0, 10.0),
                      transform: tp.Optional[tp.Callable[[np.ndarray], np.ndarray]] = None,
                      window: tp.Optional[float] = None) -> "SynthMVClassifier":
        """Fit on freshly rendered clips (audio only) plus noisy copies; ~10 s on one core for the defaults.

        ``transform`` (e.g. a codec's encode -> decode) adds a transformed copy of every clean render: a model
        can only produce music its codec can represent, and codec artefacts alone otherwise move 40 % of real
        SynthMV clips to a wrong class (measured: the SynthMV codec's reconstructions of 36 held-out clips score
        58 % with the plain classifier, 100 % with the codec-aware one; real audio 97-100 % with both).
        ``seconds`` should match the length of the clips that will be judged (the features summarise time).
        ``window``: judge excerpts of this many seconds taken anywhere in a piece (issue 22's per-segment and
        switch-latency scores): each rendered clip is cut into windows at half-window hops, so the classifier sees
        every rhythmic phase rather than only a clip's start.
        """
        rng = np.random.default_rng(seed)
        wavs, labels = [], []

        def pieces(wav: np.ndarray) -> tp.List[np.ndarray]:
            if window is None:
                return [wav]
            n, hop = round(window * SAMPLE_RATE), round(window * SAMPLE_RATE / 2)
            return [wav[s: s + n] for s in range(0, wav.size - n + 1, hop)]

        for c in range(len(CLASSES)):
            for i in range(per_class):
                full = render_audio(plan_clip(clip_seed(seed, c * 1000 + i), c, seconds))
                for wav in pieces(full):
                    power = float(np.mean(wav ** 2))
                    for snr in (None, *snrs_db):
                        noise = 0.0 if snr is None else rng.standard_normal(wav.size) * np.sqrt(power / 10 ** (snr / 10))
                        wavs.append((wav + noise).astype(np.float32))
                        labels.append(c)
                if transform is not None:
                    for wav in pieces(np.asarray(transform(full), np.float32).reshape(-1)):
                        wavs.append(wav)
                        labels.append(c)
        return cls().fit(wavs, labels)

    def save(self, path: tp.Union[str, Path]) -> None:
        np.savez(path, k=self.k, mean=self.mean, std=self.std, feats=self.feats, labels=self.labels)

    @classmethod
    def load(cls, path: tp.Union[str, Path]) -> "SynthMVClassifier":
        data = np.load(path)
        out = cls(int(data["k"]))
        out.mean, out.std, out.feats, out.labels = data["mean"], data["std"], data["feats"], data["labels"]
        return out


def estimate_tempo(wav: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Tempo in BPM as librosa's beat tracker hears it (what a "N BPM" request is judged by)."""
    import librosa

    return float(np.atleast_1d(librosa.beat.beat_track(y=np.asarray(wav, np.float32), sr=sr)[0])[0])


# ------------------------------------------------------------------------------------------------- dataset
def clip_seed(seed: int, index: int) -> int:
    """Per-clip seed: independent of the worker count and of how many clips the run makes."""
    return int(np.random.default_rng([seed, index]).integers(2 ** 31))


def _job(args: tp.Tuple[Path, int, int, float, int, bool, str, int]) -> dict:
    out, seed, index, seconds, size, wav, rhythm, scenes = args
    cls = index % len(CLASSES)  # balanced classes (of the first scene)
    name = f"synthmv_{seed:04d}_{index:05d}"
    if scenes > 1:
        _, classes = plan_scenes(clip_seed(seed, index), scenes, seconds)
        classes = [(c - classes[0] + cls) % len(CLASSES) for c in classes]  # rotate: still distinct neighbours
        clip = generate_multiscene(clip_seed(seed, index), scenes, seconds, size, classes, out / f"{name}.mp4",
                                   rhythm)
    else:
        clip = generate_clip(clip_seed(seed, index), cls, seconds, size, out_path=out / f"{name}.mp4", write_wav=wav,
                             rhythm=rhythm)
    lab = clip.labels
    extra = {"scenes": scenes, "cuts": lab["cuts"], "segment_classes": [g["class_id"] for g in lab["segments"]]
             } if scenes > 1 else {}
    return {**extra, "id": name, "path": f"{name}.mp4", "labels": f"{name}.json", "start": 0.0, "duration": lab["seconds"],
            "class_id": lab["class_id"], "class_name": lab["class_name"], "instrument": lab["instrument"],
            "key": lab["key"], "tempo_bpm": lab["tempo_bpm"], "tags": lab["tags"], "num_events": len(lab["events"])}


def generate_dataset(out: tp.Union[str, Path], num: int, seed: int = 0, seconds: float = 10.0, size: int = 64,
                     workers: int = 0, split: str = "train", wav: bool = False,
                     window: tp.Optional[float] = None, rhythm: str = "steady", scenes: int = 1) -> Path:
    """Write ``num`` clips (``scenes`` > 1: multi-scene clips, :func:`generate_multiscene`), ``manifest.jsonl`` and ``vmas_manifest.jsonl`` (see :func:`write_vmas_manifest`) into
    ``out``; returns the path of ``manifest.jsonl``.

    Clip ``i`` has class ``i % 6`` and seed ``clip_seed(seed, i)``, so the output is the same for any ``workers``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if scenes > 1 and wav:
        raise ValueError("--wav is not supported with --scenes (write single-scene clips for codec training)")
    jobs = [(out, seed, i, seconds, size, wav, rhythm, scenes) for i in range(num)]
    workers = workers or min(len(jobs), os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers) as pool:
            rows = pool.map(_job, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        rows = [_job(j) for j in jobs]
    return write_manifests(rows, out, split, seconds, window)


def write_manifests(rows: tp.Sequence[dict], out: Path, split: str, seconds: float,
                    window: tp.Optional[float] = None) -> Path:
    """The generator's label manifest (``manifest.jsonl``: each row with its split) and the VMAs manifest
    (:func:`write_vmas_manifest`) of rendered clips; returns the label manifest. SynthMV and RealMusic-MV both end
    here."""
    manifest = out / "manifest.jsonl"
    with open(manifest, "w") as f:
        for row in rows:
            f.write(json.dumps({**row, "split": split}) + "\n")
    write_vmas_manifest(rows, out, split, seconds, window)
    return manifest


def write_vmas_manifest(rows: tp.Sequence[dict], out: Path, split: str, seconds: float,
                        window: tp.Optional[float] = None) -> Path:
    """``vmas_manifest.jsonl``: the rows :mod:`tools.preprocess` reads (key, absolute video path, start, duration,
    split, tags, class_id, labels path). ``window`` cuts each clip into ``seconds // window`` windows with keys
    ``<id>_<start>`` (the 5 s SynthMV preset trains on two windows per 10 s video)."""
    starts = [0.0] if not window else [i * window for i in range(int(seconds // window))]
    path = out / "vmas_manifest.jsonl"
    with open(path, "w") as f:
        for row in rows:
            for s in starts:
                key = row["id"] if not window else f"{row['id']}_{s:g}"
                f.write(json.dumps({
                    "key": key, "source_id": row["id"], "video": str((out / row["path"]).resolve()), "start": s,
                    "duration": window or seconds, "split": split, "tags": row["tags"], "class_id": row["class_id"],
                    "labels": str((out / row["labels"]).resolve())}) + "\n")
    return path


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmas.synthmv", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (mp4 + labels json + manifest.jsonl)")
    p.add_argument("--num", type=int, default=100, help="number of clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores, at most 8)")
    p.add_argument("--split", default="train", help="split name written into the manifest")
    p.add_argument("--wav", action="store_true", help="also write the uncompressed audio as <clip>.wav")
    p.add_argument("--window", type=float, default=None,
                   help="cut clips into windows of this many seconds in vmas_manifest.jsonl (e.g. 5 for synthmv_tiny)")
    p.add_argument("--rhythm", choices=RHYTHMS, default="steady",
                   help="note timing: a metronome grid, or a renewal process the music's past cannot predict")
    p.add_argument("--scenes", type=int, default=1,
                   help="scenes per clip joined by hard cuts; picture and music change class at each cut (labels: "
                        "cuts, segments)")
    args = p.parse_args(argv)
    if args.scenes < 1 or args.seconds < args.scenes * MIN_SCENE_SECONDS:
        p.error(f"--scenes N needs N >= 1 and --seconds >= {MIN_SCENE_SECONDS:g} * N")
    if args.num < 1 or args.seconds <= 1.0 or args.size < 16 or args.size % 2:
        p.error("need --num >= 1, --seconds > 1 and an even --size >= 16")
    t0 = time.time()
    manifest = generate_dataset(args.out, args.num, args.seed, args.seconds, args.size, args.workers, args.split,
                                args.wav, args.window, args.rhythm, args.scenes)
    dt = time.time() - t0
    print(f"wrote {args.num} clips to {args.out} ({manifest.name}) in {dt:.1f} s ({args.num / dt:.1f} clips/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
