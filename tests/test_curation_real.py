"""Curation of real music on footage with real motion, with default settings (issue 18).

Music: real recorded tracks (Debian drascula-music Oggs, the ``real_music`` fixture; skipped without them).
Footage: there is no package of real video here, so the footage is made from real photographs (scikit-learn's
``china.jpg`` and ``flower.jpg``, 640x427) filmed by a virtual camera: pans and zooms over the photo and hard cuts
between shots, 10 fps. Five such "music videos" should be kept; two "album cover" videos (a still photo, and the
same photo under a slow Ken-Burns zoom) are what the visual-variety filter exists to drop.
"""
import json
from pathlib import Path

import av
import numpy as np
import pytest

FPS, W, H, SECONDS = 10, 128, 96, 12.0


def _photos():
    import sklearn.datasets
    from PIL import Image

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [np.asarray(Image.open(folder / n).convert("RGB")) for n in ("china.jpg", "flower.jpg")]


def _shot(photo, n, start, end):
    """n frames of a W:H window moving from ``start`` to ``end`` = (x, y, zoom) in [0, 1] (zoom = window height
    as a share of the photo's)."""
    from PIL import Image

    ph, pw, _ = photo.shape
    out = []
    for i in range(n):
        a = i / max(1, n - 1)
        x, y, z = (s + (e - s) * a for s, e in zip(start, end))
        h = z * ph
        w = min(pw, h * W / H)
        left, top = x * (pw - w), y * (ph - h)
        crop = Image.fromarray(photo).crop((left, top, left + w, top + h))
        out.append(np.asarray(crop.resize((W, H), Image.BILINEAR)))
    return out


def _footage(kind, photos, rng):
    n = int(SECONDS * FPS)
    china, flower = photos
    if kind == "still":
        return _shot(china, n, (0.5, 0.5, 1.0), (0.5, 0.5, 1.0))
    if kind == "kenburns":
        return _shot(flower, n, (0.5, 0.5, 1.0), (0.5, 0.5, 0.8))
    if kind == "pan":
        return _shot(china, n, (0.0, 0.3, 0.6), (1.0, 0.6, 0.6))
    shots = {"cuts": 6, "cuts_fast": 12}.get(kind, 3)
    frames = []
    for k in range(shots):
        start, end = rng.uniform([0, 0, 0.35], [1, 1, 0.9]), rng.uniform([0, 0, 0.35], [1, 1, 0.9])
        frames += _shot(photos[k % 2] if kind != "cuts_china" else china, n // shots, start, end)
    return frames


def _music_video(path, frames, music, offset):
    from vmas.data import media

    silent = path.with_name(path.stem + ".noaudio.mp4")
    with av.open(str(silent), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        for f in frames:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(vs.encode())
    wav = media.read_audio(music, sr=32000, start=offset, duration=SECONDS)  # [N] real recorded music
    media.mux_audio(silent, wav, path, sr=32000)
    silent.unlink()


MOVING = ("cuts", "cuts_fast", "cuts_china", "pan", "mixed")
STILL = ("still", "kenburns")


@pytest.fixture(scope="module")
def music_videos(real_music, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_mv")
    photos, rng = _photos(), np.random.default_rng(0)
    tracks = [t for t in real_music if av.open(str(t)).duration / 1e6 > 40][:len(MOVING) + len(STILL)]
    for kind, track in zip(MOVING + STILL, tracks):
        _music_video(root / f"{kind}.mp4", _footage(kind, photos, rng), track, offset=20.0)
    return root


def test_default_curation_keeps_real_footage_and_drops_still_images(music_videos, tmp_path, capsys):
    from datasets import disco_mv

    out = tmp_path / "cur"
    # Default settings; Demucs is not installed here, so the vocal removal step is switched off.
    assert disco_mv.main([str(music_videos), "--out", str(out), "--no-vocal-removal"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rejects = {json.loads(line)["source_id"]: json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()}
    kept = {json.loads(line)["source_id"] for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert kept == set(MOVING), rejects
    assert {k: rejects[k]["reason"] for k in STILL} == {k: "low_visual_variety" for k in STILL}
    assert summary["videos_kept"] == 5 and summary["clips"] == 5 and summary["problem"] is None
    capsys.readouterr()


def test_a_run_that_keeps_nothing_fails_loudly(music_videos, tmp_path, capsys):
    from datasets import disco_mv

    args = [str(music_videos), "--out", str(tmp_path / "cur"), "--no-vocal-removal",
            "data.curation.variety_threshold=0.05"]  # a threshold on the wrong scale: every video "too similar"
    assert disco_mv.main(args) == 3
    err = capsys.readouterr().err
    assert "kept 0 of 7 videos (7 low_visual_variety)" in err and "variety_threshold" in err
    assert (tmp_path / "cur" / "manifest.jsonl").read_text() == ""  # written, and inspectable
    assert disco_mv.main(args + ["--accept-drops"]) == 0

    # One reason dropping most (not all) of the input is also an error: 6 of 7 > max_reject_share 0.5.
    assert disco_mv.main([str(music_videos), "--out", str(tmp_path / "c2"), "--no-vocal-removal",
                          "data.curation.variety_threshold=0.2"]) == 3
    assert "6 of 7 videos dropped as low_visual_variety" in capsys.readouterr().err
