"""RealMusic-MV: real recorded soundtracks with pictures drawn from the music's own onsets (issue 32).

    make realmusic-music                                      # unpack the Debian soundtracks into .cache/real_music_mv
    .venv/bin/python -m datasets.realmusic_mv --out data/realmusic/train --split train --per-class 120 --seed 0 \
        --window 5 --wav
    .venv/bin/python -m datasets.realmusic_mv --out data/realmusic/test --split test --per-class 12 --seed 1

SynthMV (``vmas.synthmv``) knows its truth because it synthesises the music. Here the music is real (four game
soundtracks shipped by Debian: ``nexuiz`` electronic, ``wesnoth`` orchestral, ``drascula``, ``hedgewars``) and the
truth comes from the other direction: the picture is rendered *from* the music, so

- **timing**: every visual event sits at an onset detected in the clip's own audio (``vmas.alignment.onset_times``
  at 10 ms hops, the detector the onset-F1 score uses), rounded to the 25 fps frame grid (<= 20 ms); the shape
  jumps on each event, its height follows the spectral centroid at the onset, the frame flashes on the strongest
  quarter of the onsets and the scene cuts on every fourth flash;
- **style**: each soundtrack (= class) has its own palette and shape, drawn by SynthMV's renderer
  (``vmas.synthmv.render_video(..., style=)``), so the soundtrack can be read off the picture.

The picture holds no audio: positions and flashes are a handful of numbers per onset, never a spectrogram or a
waveform, so a model cannot copy the sound from it.

Splits hold out whole **tracks**: each class's tracks are shuffled with ``--split-seed`` (the same for every
split, so separate invocations agree) and dealt to test / select / val / train (20 / 15 / 10 % / rest, at least one
track each); clips of one track never appear in two splits. ``--seed`` picks the clips (non-overlapping windows,
round-robin over the split's tracks so long tracks do not dominate) and the renderer's jump positions.

Outputs (the SynthMV layout, so ``tools/preprocess.py`` and the benchmarks read it): ``<clip>.mp4`` (25 fps
H.264 + 32 kHz AAC), ``<clip>.json`` labels (class, track, start in the track, every detected onset, the rendered
events), optional ``<clip>.wav`` (``--wav``, codec training), ``manifest.jsonl``, ``vmas_manifest.jsonl`` and
``tracks.json`` (the track assignment of every split).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmas import alignment
from vmas.errors import DataError, VmasError
from vmas.synthmv import CODE_RATE, FPS, SAMPLE_RATE, clip_seed, render_video, write_mp4

MUSIC_DIR = Path(__file__).resolve().parent.parent / ".cache" / "real_music_mv"
"""Where ``make realmusic-music`` unpacks the soundtracks: one folder of ``.ogg`` files per class."""
SPLITS = ("train", "val", "select", "test")
HELD_OUT_FRACTIONS = (("test", 0.20), ("select", 0.15), ("val", 0.10))
"""Share of each class's tracks dealt to the held-out splits, in dealing order; train keeps the rest."""
MIN_GAP_FRAMES = 3
"""Shortest gap between two rendered events, 120 ms: the model samples the picture every 104 ms (9.6 fps), so at
least one model frame lies between any two events and each jump is seen (SynthMV keeps 160 ms; real music is
denser: a 10 s nexuiz clip has about 70 onsets)."""
MIN_ONSETS = 4
"""A window with fewer detected onsets (a held chord, a fade) is skipped: it has no timing to learn."""
MIN_RMS_DB = -40.0
"""A window quieter than this (RMS, dBFS, before levelling) is silence or a fade tail and is skipped."""
TARGET_RMS_DB = -20.0
"""Every clip is levelled to this RMS (a plain gain, peak kept <= 0.99): the soundtracks' levels differ by 10 dB."""
EDGE_SECONDS = 0.05
"""Onsets earlier than this in a clip are the window's cut, not the music (dropped from the labels)."""
ONSET_HOP = SAMPLE_RATE // 100
"""10 ms hops: the resolution of the onset-F1 score (``vmas.metrics.onsets.onset_times_10ms``)."""


@dataclass(frozen=True)
class Soundtrack:
    """One class: a Debian soundtrack and the look its clips get."""

    name: str
    package: str
    shape: str
    """One of SynthMV's shapes (``vmas.synthmv._shape_mask``)."""
    palette: tp.Tuple[tp.Tuple[int, int, int], tp.Tuple[int, int, int], tp.Tuple[int, int, int]]
    """(background top, background bottom, shape colour) as in ``vmas.synthmv.SynthClass``."""
    tags: str
    """What a listener would write for it (the tempo is added per clip)."""


SOUNDTRACKS: tp.Tuple[Soundtrack, ...] = (
    Soundtrack("nexuiz", "nexuiz-music", "triangle", ((10, 10, 40), (70, 0, 100), (0, 255, 200)),
               "electronic, synth, drums, energetic"),
    Soundtrack("wesnoth", "wesnoth-1.16-music", "diamond", ((150, 110, 50), (50, 35, 15), (255, 235, 160)),
               "orchestral, strings, epic, cinematic"),
    Soundtrack("drascula", "drascula-music", "ring", ((20, 60, 40), (90, 0, 30), (235, 235, 235)),
               "adventure game, playful, retro"),
    Soundtrack("hedgewars", "hedgewars-data", "circle", ((130, 200, 255), (30, 140, 50), (255, 80, 160)),
               "cartoon, cheerful, game music"),
)
SOUNDTRACK_BY_NAME = {s.name: s for s in SOUNDTRACKS}


# ------------------------------------------------------------------------------------------------ tracks
def find_tracks(music_dir: tp.Union[str, Path], classes: tp.Sequence[str]) -> tp.Dict[str, tp.List[Path]]:
    """{class: sorted audio files} under ``music_dir/<class>/``; raises :class:`DataError` naming a missing class."""
    out = {}
    for name in classes:
        folder = Path(music_dir) / name
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".ogg", ".wav", ".flac", ".mp3"))
        if not files:
            raise DataError(f"{folder}: no audio files for class {name!r}; run `make realmusic-music` "
                            f"(or pass --music-dir / --classes)")
        out[name] = files
    return out


def usable(path: Path, seconds: float) -> bool:
    """A track is used when it is at least one clip long and recorded at >= 32 kHz (nexuiz's ``thunder.ogg`` is an
    11 kHz thunder effect, not music)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return False
        stream = container.streams.audio[0]
        length = container.duration / 1e6 if container.duration else float(stream.duration * stream.time_base)
        return stream.rate >= SAMPLE_RATE and length >= seconds


def split_tracks(tracks: tp.Dict[str, tp.List[Path]], split_seed: int = 0) -> tp.Dict[str, tp.Dict[str, tp.List[str]]]:
    """{split: {class: track file names}}: each class's tracks shuffled by ``split_seed`` and dealt out.

    Depends only on the file names and ``split_seed`` (never on ``--seed`` or the split asked for), so every
    invocation sees the same assignment and no track is in two splits.
    """
    out: tp.Dict[str, tp.Dict[str, tp.List[str]]] = {s: {} for s in SPLITS}
    for ci, (name, files) in enumerate(sorted(tracks.items())):
        names = sorted(p.name for p in files)
        if len(names) < len(SPLITS):
            raise DataError(f"class {name!r} has {len(names)} usable tracks; held-out splits need at least "
                            f"{len(SPLITS)}")
        order = [names[i] for i in np.random.default_rng([split_seed, ci, 271828]).permutation(len(names))]
        pos = 0
        for split, frac in HELD_OUT_FRACTIONS:
            n = max(1, round(frac * len(names)))
            out[split][name] = sorted(order[pos: pos + n])
            pos += n
        out["train"][name] = sorted(order[pos:])
    return out


def choose_windows(lengths: tp.Dict[str, int], seconds: float, num: int, rng: np.random.Generator,
                   ok: tp.Callable[[str, int], bool]) -> tp.List[tp.Tuple[str, int]]:
    """Up to ``num`` (track, start sample) windows, round-robin over the tracks in a shuffled order.

    ``lengths``: samples per track; windows are the track's non-overlapping ``seconds`` windows in a shuffled order,
    filtered by ``ok(track, start)`` (loud enough, enough onsets), so each track gives about ``num / tracks`` clips.
    """
    n = round(seconds * SAMPLE_RATE)
    names = sorted(lengths)
    names = [names[i] for i in rng.permutation(len(names))]
    queues = {t: [s * n for s in rng.permutation(lengths[t] // n)] for t in names}
    chosen: tp.List[tp.Tuple[str, int]] = []
    while len(chosen) < num and any(queues.values()):
        for t in names:
            while queues[t] and len(chosen) < num:
                start = int(queues[t].pop(0))
                if ok(t, start):
                    chosen.append((t, start))
                    break
    return chosen


# ------------------------------------------------------------------------------------------------ labels
def level(wav: np.ndarray) -> tp.Tuple[np.ndarray, float]:
    """(wav at :data:`TARGET_RMS_DB` RMS with its peak <= 0.99, gain in dB)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    gain = 10 ** (TARGET_RMS_DB / 20) / max(rms, 1e-9)
    gain = min(gain, 0.99 / max(float(np.abs(wav).max()), 1e-9))
    return (wav * gain).astype(np.float32), 20 * float(np.log10(gain))


def loud(raw: np.ndarray) -> bool:
    """RMS of the raw window at or above :data:`MIN_RMS_DB` dBFS."""
    return 20 * np.log10(max(float(np.sqrt(np.mean(np.square(raw, dtype=np.float64)))), 1e-9)) >= MIN_RMS_DB


def plan_events(wav: np.ndarray, seconds: float) -> tp.Tuple[np.ndarray, tp.List[dict]]:
    """(every detected onset time [n] s, rendered events) of a levelled clip.

    Events follow SynthMV's label format (``time``, ``frame``, ``code_frame``, ``degree``, ``types``) and add the
    exact ``onset_time``. Onsets in the first :data:`EDGE_SECONDS` are dropped: a window that starts inside a note
    makes the detector fire at the cut. An onset is rendered when it lies at least :data:`MIN_GAP_FRAMES` frames after the last
    rendered one and before the last frame. ``degree`` (0-7, the height on screen) ranks the spectral centroid at
    the onset within the clip; ``flash`` marks the top quarter by onset strength, ``cut`` every fourth flash.
    """
    import librosa

    onsets = alignment.onset_times(wav, SAMPLE_RATE, hop_length=ONSET_HOP)  # [n] s
    onsets = onsets[onsets >= EDGE_SECONDS]  # the cut itself, not the music
    n_frames = round(seconds * FPS)
    frames, times = [], []
    for t in onsets:
        k = int(round(t * FPS))
        if k >= n_frames or (frames and k - frames[-1] < MIN_GAP_FRAMES):
            continue
        frames.append(k)
        times.append(float(t))
    if not frames:
        return onsets, []
    strength = librosa.onset.onset_strength(y=wav, sr=SAMPLE_RATE, hop_length=ONSET_HOP)  # [hops]
    centroid = librosa.feature.spectral_centroid(y=wav, sr=SAMPLE_RATE, hop_length=ONSET_HOP)[0]  # [hops]
    idx = np.minimum(np.round(np.asarray(times) * SAMPLE_RATE / ONSET_HOP).astype(int), strength.size - 1)
    s_at = strength[idx]
    c_at = np.log(centroid[np.minimum(idx + 2, centroid.size - 1)] + 1.0)  # 20 ms into the attack
    ranks = np.argsort(np.argsort(c_at, kind="stable"), kind="stable")
    degrees = (ranks * 8 // max(1, len(ranks))).astype(int)
    flash = s_at >= np.quantile(s_at, 0.75)
    events, n_flash = [], 0
    for k, t, d, f in zip(frames, times, degrees, flash):
        types = ["jump"]
        if f:
            types.append("flash")
            n_flash += 1
            if n_flash % 4 == 0:
                types.append("cut")
        events.append({"time": k / FPS, "frame": k, "code_frame": 2 * k, "onset_time": round(t, 6),
                       "degree": int(d), "types": types})
    return onsets, events


def make_labels(wav: np.ndarray, seed: int, class_id: int, sound: Soundtrack, track: str, start: float,
                seconds: float, gain_db: float, size: int) -> dict:
    """The labels dictionary of one levelled clip (SynthMV's keys plus ``track``, ``track_start`` and the style)."""
    from vmas.synthmv import estimate_tempo

    onsets, events = plan_events(wav, seconds)
    tempo = estimate_tempo(wav, SAMPLE_RATE)
    return {
        "seed": int(seed), "class_id": int(class_id), "class_name": sound.name, "package": sound.package,
        "track": track, "track_start": round(start, 6), "seconds": float(seconds), "gain_db": round(gain_db, 3),
        "tempo_bpm": round(tempo, 2), "rhythm": "real", "fps": FPS, "sample_rate": SAMPLE_RATE,
        "code_rate": CODE_RATE, "size": size, "shape": sound.shape, "palette": [list(c) for c in sound.palette],
        "tags": f"{sound.tags}, {round(tempo)} BPM", "onsets": [round(float(t), 6) for t in onsets],
        "events": events,
    }


def class_clips(audio: tp.Dict[str, np.ndarray], class_id: int, sound: Soundtrack, num: int, seed: int,
                seconds: float, size: int) -> tp.List[tp.Tuple[np.ndarray, dict]]:
    """Up to ``num`` (levelled wav [N], labels) clips of one class from its split's decoded tracks
    (``audio``: {track name: mono float32 at 32 kHz}); windows too quiet or with too few onsets are skipped."""
    n = round(seconds * SAMPLE_RATE)
    found: tp.Dict[tp.Tuple[str, int], tp.Tuple[np.ndarray, dict]] = {}

    def ok(track: str, start: int) -> bool:
        raw = audio[track][start: start + n]
        if not loud(raw):
            return False
        wav, gain_db = level(raw)
        labels = make_labels(wav, seed, class_id, sound, track, start / SAMPLE_RATE, seconds, gain_db, size)
        if len(labels["onsets"]) < MIN_ONSETS:
            return False
        found[(track, start)] = (wav, labels)
        return True

    rng = np.random.default_rng([seed, class_id, 1299709])
    chosen = choose_windows({t: a.size for t, a in audio.items()}, seconds, num, rng, ok)
    return [found[key] for key in chosen]


# ----------------------------------------------------------------------------------------------- dataset
def _render(args: tp.Tuple[Path, str, np.ndarray, dict, bool]) -> dict:
    """Write one clip (mp4 + labels + optional wav); returns its manifest row."""
    out, name, wav, labels, write_wav = args
    frames = render_video(labels, labels["size"], style=(labels["shape"], labels["palette"]))
    write_mp4(out / f"{name}.mp4", frames, wav)
    labels = dict(labels, file=f"{name}.mp4")
    (out / f"{name}.json").write_text(json.dumps(labels, indent=1))
    if write_wav:
        from vmas.data.media import write_wav as _write_wav

        _write_wav(out / f"{name}.wav", wav, SAMPLE_RATE)
    return {"id": name, "path": f"{name}.mp4", "labels": f"{name}.json", "start": 0.0, "duration": labels["seconds"],
            "class_id": labels["class_id"], "class_name": labels["class_name"], "track": labels["track"],
            "track_start": labels["track_start"], "tempo_bpm": labels["tempo_bpm"], "tags": labels["tags"],
            "num_events": len(labels["events"]), "num_onsets": len(labels["onsets"])}


def generate_dataset(out: tp.Union[str, Path], split: str, per_class: int, seed: int = 0, split_seed: int = 0,
                     seconds: float = 10.0, size: int = 64, music_dir: tp.Union[str, Path] = MUSIC_DIR,
                     classes: tp.Sequence[str] = tuple(s.name for s in SOUNDTRACKS), wav: bool = False,
                     window: tp.Optional[float] = None, workers: int = 1,
                     log: tp.Callable[[str], None] = print) -> Path:
    """Write ``per_class`` clips of each class from ``split``'s tracks into ``out``; returns ``manifest.jsonl``.

    Clip names are ``<class>_<split>_<seed>_<index>``; the same arguments give the same clips (the track
    assignment depends on ``split_seed`` only, the clip choice on ``seed``).
    """
    from vmas.data import media
    from vmas.synthmv import write_manifests

    if split not in SPLITS:
        raise DataError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    unknown = [c for c in classes if c not in SOUNDTRACK_BY_NAME]
    if unknown:
        raise DataError(f"--classes: unknown {unknown}; choose from {', '.join(SOUNDTRACK_BY_NAME)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = {c: [p for p in files if usable(p, seconds)] for c, files in find_tracks(music_dir, classes).items()}
    assignment = split_tracks(tracks, split_seed)
    (out / "tracks.json").write_text(json.dumps({"split_seed": split_seed, "classes": list(classes),
                                                 "splits": assignment}, indent=1))
    jobs = []
    for ci, cname in enumerate(classes):
        by_name = {p.name: p for p in tracks[cname]}
        audio = {t: media.read_audio(by_name[t], sr=SAMPLE_RATE).numpy() for t in assignment[split][cname]}
        chosen = class_clips(audio, ci, SOUNDTRACK_BY_NAME[cname], per_class, seed, seconds, size)
        if len(chosen) < per_class:
            log(f"warning: {cname}/{split}: only {len(chosen)} usable windows in {len(audio)} tracks "
                f"(asked for {per_class})")
        for i, (clip_wav, labels) in enumerate(chosen):
            labels = dict(labels, seed=clip_seed(seed, 100_000 * ci + i))  # the renderer's jump positions
            jobs.append((out, f"{cname}_{split}_{seed}_{i:04d}", clip_wav, labels, wav))
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            rows = pool.map(_render, jobs, chunksize=4)
    else:
        rows = [_render(j) for j in jobs]
    return write_manifests(rows, out, split, seconds, window)


def write_audio_windows(out: tp.Union[str, Path], split: str, split_seed: int = 0, seconds: float = 10.0,
                        music_dir: tp.Union[str, Path] = MUSIC_DIR,
                        classes: tp.Sequence[str] = tuple(s.name for s in SOUNDTRACKS)) -> int:
    """Every loud enough ``seconds`` window of ``split``'s tracks, levelled as the clips are, as ``<class>/<track>_<start>.wav``
    (no pictures or labels): the codec's training audio, a superset of the split's clips. Returns the count."""
    from vmas.data import media

    out = Path(out)
    n, count = round(seconds * SAMPLE_RATE), 0
    tracks = {c: [p for p in files if usable(p, seconds)] for c, files in find_tracks(music_dir, classes).items()}
    assignment = split_tracks(tracks, split_seed)
    for cname in classes:
        (out / cname).mkdir(parents=True, exist_ok=True)
        for p in tracks[cname]:
            if p.name not in assignment[split][cname]:
                continue
            audio = media.read_audio(p, sr=SAMPLE_RATE).numpy()
            for start in range(0, audio.size - n + 1, n):
                raw = audio[start: start + n]
                if loud(raw):
                    media.write_wav(out / cname / f"{p.stem}_{start // SAMPLE_RATE:05d}.wav", level(raw)[0], SAMPLE_RATE)
                    count += 1
    return count


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datasets.realmusic_mv", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (mp4 + labels json + manifests)")
    p.add_argument("--split", required=True, choices=SPLITS, help="which held-out track set to cut clips from")
    p.add_argument("--per-class", type=int, default=20, help="clips per class (fewer if the tracks run out)")
    p.add_argument("--seed", type=int, default=0, help="clip choice and the renderer's jump positions")
    p.add_argument("--split-seed", type=int, default=0, help="track assignment (keep it equal across splits)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    p.add_argument("--music-dir", default=str(MUSIC_DIR), help="folder with one subfolder of audio per class")
    p.add_argument("--classes", default=",".join(s.name for s in SOUNDTRACKS),
                   help="comma-separated classes (subfolders of --music-dir), in class-id order")
    p.add_argument("--wav", action="store_true", help="also write each clip's audio as <clip>.wav (codec training)")
    p.add_argument("--window", type=float, default=None, help="cut clips into windows of this many seconds in "
                   "vmas_manifest.jsonl (5 for the 5 s presets)")
    p.add_argument("--workers", type=int, default=1, help="render processes")
    p.add_argument("--audio-only", action="store_true", help="write every loud window of the split's tracks as a "
                   "levelled wav, no pictures (the codec's training audio)")
    args = p.parse_args(argv)
    if args.audio_only:
        count = write_audio_windows(args.out, args.split, args.split_seed, args.seconds, args.music_dir,
                                    [c for c in args.classes.split(",") if c])
        print(f"wrote {count} windows to {args.out}")
        return 0
    if args.per_class < 1 or args.seconds <= 1.0 or args.size < 16 or args.size % 2:
        p.error("need --per-class >= 1, --seconds > 1 and an even --size >= 16")
    t0 = time.time()
    try:
        manifest = generate_dataset(args.out, args.split, args.per_class, args.seed, args.split_seed, args.seconds,
                                    args.size, args.music_dir, [c for c in args.classes.split(",") if c], args.wav,
                                    args.window, args.workers)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = manifest.read_text().splitlines()
    print(f"wrote {len(rows)} clips to {args.out} ({manifest.name}) in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
