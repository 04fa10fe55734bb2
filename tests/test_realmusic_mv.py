"""RealMusic-MV generator (issue 32): held-out tracks per split, visual events at the music's detected onsets.

Synthetic tracks with notes at known times stand in for the soundtracks (numbers checked against the construction);
the real Debian soundtracks are checked too when ``make realmusic-music`` has unpacked them (skipped otherwise).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets import realmusic_mv as rmv
from vmas.data import media
from vmas.synthmv import FPS, SAMPLE_RATE, render_video

CLASSES = ("nexuiz", "wesnoth", "drascula")
TRACK_SECONDS = 16.0


def note_times(seed: int) -> np.ndarray:
    """Known note onsets (s) of synthetic track ``seed``: gaps of 0.2-0.6 s, so each is a clean, separate attack."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.uniform(0.2, 0.6, 60)) + 0.1


def synth_track(seed: int, sr: int = 44100) -> np.ndarray:
    """Decaying harmonic notes at :func:`note_times`, at 44.1 kHz like the oggs (the generator resamples)."""
    rng = np.random.default_rng(seed + 1000)
    n = int(TRACK_SECONDS * sr)
    out = np.zeros(n)
    for t0 in note_times(seed):
        s = int(round(t0 * sr))
        if s >= n:
            break
        m = min(n - s, int(0.18 * sr))
        t = np.arange(m) / sr
        f0 = 220 * 2 ** (rng.integers(0, 12) / 12)
        fade = 0.5 * (1 + np.cos(np.pi * np.clip((t - 0.12) / 0.06, 0, 1)))  # smooth end: no onset at the cut
        out[s: s + m] += fade * np.exp(-t / 0.05) * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3))
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="module")
def music_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("music")
    for ci, name in enumerate(CLASSES):
        (root / name).mkdir()
        for j in range(4):
            media.write_wav(root / name / f"track{j}.wav", synth_track(10 * ci + j), 44100)
    return root


@pytest.fixture(scope="module")
def splits(music_dir, tmp_path_factory) -> dict:
    out = {}
    for seed, split in enumerate(("train", "test")):
        folder = tmp_path_factory.mktemp(split)
        rmv.generate_dataset(folder, split, per_class=2, seed=seed, seconds=5.0, size=32, music_dir=music_dir,
                             classes=CLASSES, window=2.5, log=lambda s: None)
        out[split] = folder
    return out


def test_split_tracks_deal_whole_tracks():
    """Every track in exactly one split, each held-out split gets >= 1 track per class, the same for any call."""
    tracks = {c: [Path(f"t{i:02d}.ogg") for i in range(n)] for c, n in (("a", 18), ("b", 41), ("c", 4))}
    a = rmv.split_tracks(tracks, 0)
    assert a == rmv.split_tracks(dict(reversed(list(tracks.items()))), 0)
    for c, files in tracks.items():
        dealt = [t for s in rmv.SPLITS for t in a[s][c]]
        assert sorted(dealt) == sorted(p.name for p in files)  # each exactly once
        assert all(len(a[s][c]) >= 1 for s in rmv.SPLITS)
    # 41 tracks: test round(8.2) = 8, select round(6.15) = 6, val round(4.1) = 4, train 23
    assert [len(a[s]["b"]) for s in ("test", "select", "val", "train")] == [8, 6, 4, 23]
    assert rmv.split_tracks(tracks, 1) != a


def test_clips_never_share_a_track_across_splits(splits):
    used = {}
    for split, folder in splits.items():
        rows = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
        assert len(rows) == 2 * len(CLASSES)
        assert sorted({r["class_id"] for r in rows}) == [0, 1, 2]
        used[split] = {(r["class_name"], r["track"]) for r in rows}
        assignment = json.loads((folder / "tracks.json").read_text())["splits"][split]
        assert all(track in assignment[c] for c, track in used[split])
        vrows = [json.loads(x) for x in (folder / "vmas_manifest.jsonl").read_text().splitlines()]
        assert [v["start"] for v in vrows[:2]] == [0.0, 2.5] and len(vrows) == 2 * len(rows)  # --window 2.5
    assert not used["train"] & used["test"]


def test_events_fall_at_the_music_onsets(splits):
    """Detected onsets sit on the known notes (+-20 ms), and every rendered event is a detected onset on the
    25 fps grid, at least MIN_GAP_FRAMES apart."""
    n_notes = n_found = 0
    for folder in splits.values():
        for path in sorted(folder.glob("*.json")):
            if path.name in ("tracks.json",):
                continue
            lab = json.loads(path.read_text())
            ci, j = CLASSES.index(lab["class_name"]), int(lab["track"][5:-4])
            every = note_times(10 * ci + j) - lab["track_start"]  # [notes] s, clip time
            truth = every[(every > 0.05) & (every < lab["seconds"] - 0.05)]  # notes well inside the clip
            onsets = np.asarray(lab["onsets"])
            assert len(onsets) and np.abs(onsets[:, None] - every[None]).min(axis=1).max() <= 0.02, path.name
            n_notes += truth.size
            n_found += int((np.abs(truth[:, None] - onsets[None]).min(axis=1) <= 0.02).sum())
            frames = np.array([e["frame"] for e in lab["events"]])
            for ev in lab["events"]:
                assert ev["onset_time"] in lab["onsets"]
                assert ev["frame"] == round(ev["onset_time"] * FPS) and ev["time"] == ev["frame"] / FPS
                assert ev["code_frame"] == 2 * ev["frame"] and 0 <= ev["degree"] < 8
            assert np.diff(frames).min() >= rmv.MIN_GAP_FRAMES
            # with notes >= 200 ms apart (5 frames) the gap rule drops nothing: every onset is an event
            assert len(lab["events"]) == int((np.round(onsets * FPS) < lab["seconds"] * FPS).sum())
    assert n_found / n_notes >= 0.95  # recall of the detector on clean notes


def test_picture_changes_exactly_at_events(splits):
    """The rendered picture is still except at events (and a flash's decay); the mp4 holds that picture and its
    audio keeps the labelled onsets."""
    folder = splits["test"]
    lab = json.loads(next(folder.glob("wesnoth_*.json")).read_text())
    frames = render_video(lab, lab["size"], style=(lab["shape"], lab["palette"])).astype(np.float64)
    diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # [T-1]: change into frame k+1
    ev = {e["frame"] for e in lab["events"]}
    flashes = [e["frame"] for e in lab["events"] if "flash" in e["types"]]
    for k in range(1, len(frames)):
        if k in ev:
            assert diff[k - 1] > 2.0, k  # a jump moves the shape by >= 2 radii
        elif not any(0 < k - f <= 10 for f in flashes):  # 0.7 * 255 * exp(-t / 60 ms) < 0.5 after 9 frames
            assert diff[k - 1] < 0.2, k  # still, but for a decayed flash's last rounding flips
    decoded = media.read_video_frames(folder / lab["file"], fps=FPS, size=None, duration=lab["seconds"])[0]
    assert decoded.shape[0] == frames.shape[0]
    assert np.abs(decoded.numpy().astype(np.float64) - frames).mean() < 4.0  # H.264 at crf 18
    wav = media.read_audio(folder / lab["file"], sr=SAMPLE_RATE).numpy()
    from vmas.metrics.onsets import onset_f1
    from vmas.metrics.onsets import onset_times_10ms as onset_times

    assert onset_f1(onset_times(wav, SAMPLE_RATE), lab["onsets"], tol=0.02) >= 0.9  # AAC keeps the timing


def test_missing_class_folder_is_one_line_error(tmp_path):
    with pytest.raises(rmv.DataError, match="make realmusic-music"):
        rmv.find_tracks(tmp_path, ["nexuiz"])


REAL = rmv.MUSIC_DIR


@pytest.mark.slow
@pytest.mark.skipif(not all((REAL / s.name / ".done").exists() for s in rmv.SOUNDTRACKS),
                    reason="real soundtracks not unpacked (run `make realmusic-music`: needs apt-get + network)")
def test_real_soundtracks(tmp_path):
    """On the real files: whole tracks per split, every class in every split, and a real clip's events are its
    detected onsets (1 clip of drascula's test tracks: the smallest decode)."""
    names = [s.name for s in rmv.SOUNDTRACKS]
    tracks = {c: [p for p in f if rmv.usable(p, 10.0)] for c, f in rmv.find_tracks(REAL, names).items()}
    assert "thunder.ogg" not in {p.name for p in tracks["nexuiz"]}  # 11 kHz sound effect
    a = rmv.split_tracks(tracks, 0)
    for c in names:
        per = [set(a[s][c]) for s in rmv.SPLITS]
        assert sum(map(len, per)) == len(set().union(*per)) == len(tracks[c]) and all(per)
    rmv.generate_dataset(tmp_path, "test", per_class=1, seed=0, classes=["drascula"], log=lambda s: None)
    lab = json.loads(next(tmp_path.glob("drascula_*.json")).read_text())
    assert lab["track"] in a["test"]["drascula"] and len(lab["onsets"]) >= rmv.MIN_ONSETS
    assert all(e["frame"] == round(e["onset_time"] * FPS) and e["onset_time"] in lab["onsets"] for e in lab["events"])
