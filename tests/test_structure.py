"""Issue 22: scene cuts as section boundaries, hit points as accents (vmas/structure.py), multi-scene SynthMV."""
from pathlib import Path

import numpy as np
import pytest
import torch

from vmas import structure
from vmas.engine import window_plan as _window_plan
from vmas.errors import VmasError
from vmas.modules.rhythm import beat_features
from vmas.synthmv import CLASSES, FPS, SAMPLE_RATE, generate_clip, generate_multiscene

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "vmas" / "assets" / "vmas-synthmv-demo.pt"


# ------------------------------------------------------------------------------------------ multi-scene SynthMV
def test_multiscene_labels_match_the_rendering():
    clip = generate_multiscene(5, scenes=3, seconds=9.0, size=32)
    lab = clip.labels
    cuts, segs = lab["cuts"], lab["segments"]
    assert len(cuts) == 2 and len(segs) == 3
    assert clip.frames.shape[0] == round(9.0 * FPS) and clip.wav.size == round(9.0 * SAMPLE_RATE)
    for c in cuts:  # on the frame grid, scenes >= 2 s
        assert abs(c * FPS - round(c * FPS)) < 1e-9
    assert [s["start"] for s in segs] == [0.0, *cuts] and [s["end"] for s in segs] == [*cuts, 9.0]
    assert all(a["class_id"] != b["class_id"] for a, b in zip(segs, segs[1:]))  # a cut changes the class
    # the picture's background is the segment's palette on both sides of every cut
    for seg in segs:
        k = round(seg["start"] * FPS) + 1
        top = np.array(CLASSES[seg["class_id"]].palette[:2], float)  # both variants' corner colours
        corner = clip.frames[k, 0, 0].astype(float)
        assert np.abs(top - corner).sum(axis=1).min() < 40
    # events were shifted into the whole clip's time, each inside its scene
    for ev in lab["events"]:
        seg = segs[ev["scene"]]
        assert seg["start"] <= ev["time"] < seg["end"] and ev["frame"] == round(ev["time"] * FPS)


# ---------------------------------------------------------------------------------------------------- detection
def test_detection_finds_scene_changes_not_flips_or_flashes():
    clip = generate_multiscene(7, scenes=3, seconds=12.0, size=32)
    scores = structure.cut_scores(structure.color_quantiles(clip.frames))
    assert structure.pick_cuts(scores, FPS) == clip.labels["cuts"]  # exact frames
    # a single scene has palette flips every two bars and a flash on every downbeat: no cut
    one = generate_clip(3, 2, seconds=12.0, size=32)
    kinds = {t for ev in one.labels["events"] for t in ev["types"]}
    assert {"cut", "flash"} <= kinds
    assert structure.pick_cuts(structure.cut_scores(structure.color_quantiles(one.frames)), FPS) == []


def test_cut_score_by_hand():
    # flat colours: frames 0-3 black, 4-7 grey 100 -> one cut at frame 4 of 100 grey levels; a one-frame flash
    # (frame 2 white in an all-black clip) leaves a black frame on both sides -> score 0 everywhere
    black, grey = np.zeros((4, 2, 2, 3), np.uint8), np.full((4, 2, 2, 3), 100, np.uint8)
    s = structure.cut_scores(structure.color_quantiles(np.concatenate([black, grey])), span=3)
    assert s[4] == pytest.approx(100.0) and np.delete(s, 4).max() == 0.0
    flash = np.zeros((8, 2, 2, 3), np.uint8)
    flash[2] = 255
    assert structure.cut_scores(structure.color_quantiles(flash), span=3).max() == 0.0
    # quantiles are trimmed: 5 % of the pixels turning white (a small object) moves nothing
    frames = np.zeros((8, 10, 10, 3), np.uint8)
    frames[4:, :5, 0] = 255
    assert structure.cut_scores(structure.color_quantiles(frames), span=3).max() == 0.0
    # two dark palettes 30 levels apart in one channel: 30 / 3 channels = 10 levels (a 4-bin histogram saw 0)
    a, b = np.full((4, 2, 2, 3), (40, 0, 60), np.uint8), np.full((4, 2, 2, 3), (10, 0, 60), np.uint8)
    assert structure.cut_scores(structure.color_quantiles(np.concatenate([a, b])), span=3)[4] == pytest.approx(10.0)


def test_detect_cuts_on_a_video_file_and_the_request_forms(tmp_path):
    clip = generate_multiscene(11, scenes=2, seconds=6.0, size=32, out_path=tmp_path / "v.mp4")
    video = tmp_path / "v.mp4"
    assert structure.detect_cuts(video) == clip.labels["cuts"]
    assert structure.resolve_cuts("auto", video, 6.0) == clip.labels["cuts"]
    assert structure.resolve_cuts("none", video, 6.0) == [] and structure.resolve_cuts(None, video, 6.0) == []
    assert structure.resolve_cuts("4.5, 1.2,9", video, 6.0) == [1.2, 4.5]  # a locked edit wins; past the end dropped
    with pytest.raises(VmasError, match=r"--cuts: 'x1' is not a time"):
        structure.resolve_cuts("2,x1", video, 6.0)
    with pytest.raises(VmasError, match="--hits: times must be seconds >= 0"):
        structure.parse_times("-1", "--hits")


# ------------------------------------------------------------------------------------------------- the plan
def test_section_plan_by_hand_and_plain_plan_without_cuts():
    secs = structure.section_windows(500, 250, 125, [300], overlap=4)
    assert [(s.start, s.end, s.stop) for s in secs] == [(0, 300, 304), (300, 500, 500)]
    assert secs[0].windows == ((0, 250), (125, 304)) and secs[1].windows == ((300, 500),)  # fresh at the cut
    for total, window, stride in [(100, 125, 62), (1000, 250, 125), (777, 250, 100)]:
        (only,) = structure.section_windows(total, window, stride, [], overlap=4)
        assert list(only.windows) == _window_plan(total, window, stride)


# ----------------------------------------------------------------------------------------------- crossfade
def test_crossfade_is_equal_power_and_removes_the_click():
    sr, fade = 32000, 64
    ones, zeros = np.ones(400), np.zeros(300)
    out_a = structure.join_sections([ones, zeros], [0, 200], 500, fade)  # a fades out over [200, 264)
    out_b = structure.join_sections([np.zeros(400), np.ones(300)], [0, 200], 500, fade)  # b fades in there
    assert np.allclose(out_a[200:264] ** 2 + out_b[200:264] ** 2, 1.0, atol=1e-6)
    assert np.all(out_a[264:] == 0) and np.all(out_a[:200] == 1) and np.all(out_b[264:] == 1)

    # hand-made music: a steady 220 Hz tone, then at 1.0 s a 330 Hz tone starting at the opposite phase
    t = np.arange(2 * sr) / sr
    a, b = 0.5 * np.sin(2 * np.pi * 220 * t), -0.5 * np.sin(2 * np.pi * 330 * (t - 1.0) + 1.3)
    cut = sr
    hard = np.concatenate([a[:cut], b[cut:]])
    n_fade = round(structure.CROSSFADE_S * sr)
    smooth = structure.join_sections([a[: cut + n_fade], b[cut:]], [0, cut], 2 * sr, n_fade)
    seam = [1.0 + structure.CROSSFADE_S / 2]
    r_hard, r_smooth = structure.seam_flux_ratio(hard, sr, [1.0]), structure.seam_flux_ratio(smooth, sr, seam)
    assert r_hard > 5  # the splice is a broadband click
    assert r_smooth < 1.5  # crossfaded: no more flux than anywhere else (measured 0.78; the splice 90)


# ------------------------------------------------------------------------------------------------------ hits
def test_hit_grid_puts_a_beat_on_every_hit():
    fr, period = 50, 25.0
    grid = structure.hit_grid([1.0, 2.1, 4.0], 300, fr, period)  # frames 50, 105, 200
    assert grid[0].tolist() == [25.0, 50.0] and grid[60].tolist() == pytest.approx([27.5, 50.0])  # 55 = 2 x 27.5
    assert grid[150].tolist() == pytest.approx([95 / 4, 105.0])  # 95 frames -> 4 beats of 23.75
    assert grid[250].tolist() == [25.0, 200.0]
    feats = beat_features(grid[None], 300)  # [1, 300, 5]
    for f in (50, 105, 200, 0, 225):  # beats: the hits, and whole periods before / after them
        assert feats[0, f, 1] == pytest.approx(1.0, abs=1e-5)  # cos(phase) = 1 on a beat
    assert feats[0, 64, 1] < -0.99  # half a beat after the hit at 50 (beats at 50, 77.5, 105)
    # windowed: the per-frame grid is read at the window's own frames
    assert torch.allclose(beat_features(grid[None], 100, start=150), feats[:, 150:250], atol=1e-5)
    # a plain [B, 2] grid gives what it gave before
    plain = beat_features(torch.tensor([[25.0, 10.0]]), 60)
    phase = 2 * np.pi * (np.arange(60) - 10) / 25
    assert np.allclose(plain[0, :, 0].numpy(), np.sin(phase), atol=1e-5)


def test_hits_need_a_beat_condition():
    with pytest.raises(VmasError, match="--hits needs a model with the beat-grid condition") as err:
        structure.check_hits([1.0], beat_condition=False)
    assert "\n" not in str(err.value)
    structure.check_hits([], beat_condition=False)
    assert structure.hits_period([1.0, 1.6, 2.2], 50) == pytest.approx(30.0)  # 0.6 s = 100 BPM
    assert structure.hits_period([1.0, 3.0], 50) == pytest.approx(50.0)  # 2 s -> halved to 1 s (60 BPM)


def test_generate_with_cuts_and_hits_through_the_demo_model(tmp_path):
    """The whole `vmas generate --cuts auto --hits ...` path: sections restart at the detected cut, and onsets land
    on the requested hits (the demo model starts a note on the bent grid's beats)."""
    from vmas.experiments.scene_scores import hits_within
    from vmas.generate import generate_for_video
    from vmas.metrics.onsets import onset_times_10ms

    clip = generate_multiscene(11, scenes=2, seconds=6.0, size=32, out_path=tmp_path / "v.mp4")
    hits = [1.3, 2.9, 4.4]
    res = generate_for_video(tmp_path / "v.mp4", DEMO, tmp_path / "out", cuts="auto", hits=hits, mix="replace")
    from vmas.data import media

    wav = media.read_audio(res.wav, sr=32000).numpy().reshape(-1)
    assert wav.size == 6 * 32000 and res.windows == 2  # one fresh window per section
    assert clip.labels["cuts"] == structure.detect_cuts(tmp_path / "v.mp4")
    assert hits_within(onset_times_10ms(wav, 32000), hits) >= 2 / 3
