"""Inference (issue 9) with the debug model: durations, odd sizes, seeds, negative tags, per-file errors, CLI."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.synthmv import write_mp4
from vmas.cli import main
from vmas.config import load_config
from vmas.data.media import audio_duration, probe_video
from vmas.engine import window_plan as _window_plan
from vmas.generate import GenerationRequest, generate_for_video, generate_for_videos
from vmas.hub import load_pretrained

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FRAME = 1 / 50  # one audio (codec) frame


def _video(path, seconds, h=32, w=64, fps=25, seed=0):
    rng = np.random.default_rng(seed)
    T = round(seconds * fps)
    frames = (rng.random((T, h, w, 3)) * 255).astype(np.uint8)
    write_mp4(path, frames, np.zeros(round(seconds * 32000), np.float32), fps=fps)
    return Path(path)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return load_pretrained(None, config=load_config(CONFIGS / "debug.yaml"), random_note="debug")


@pytest.fixture(scope="module")
def tag_pipe():
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "debug.yaml", ["model.tags.enabled=true", "model.tags.text_encoder=minilm",
                                               "model.tags.text_dim=384"])
    p = load_pretrained(None, config=cfg, random_note="debug+tags")
    # random init leaves the tag projection tiny; make tags matter so the negative branch is visible
    torch.nn.init.normal_(p.model.fuser.tag_proj.weight, std=1.0)
    return p


def test_window_plan_covers_every_frame_with_context():
    assert _window_plan(100, 125, 62) == [(0, 100)]
    plan = _window_plan(300, 125, 62)
    assert plan[0] == (0, 125) and plan[-1][1] == 300
    for (_, e0), (s1, e1) in zip(plan, plan[1:]):
        assert e0 - s1 == 125 - 62  # each continuation re-reads window - stride frames
        assert e1 - s1 <= 125
    assert plan == [(0, 125), (62, 187), (124, 249), (186, 300)]


@pytest.mark.parametrize("seconds", [3.0, 10.0, 23.0])
def test_output_duration_equals_video(tmp_path, pipe, seconds):
    src = _video(tmp_path / f"v{seconds:g}.mp4", seconds)
    res = generate_for_videos([src], pipe, tmp_path / "out", GenerationRequest(top_k=16), progress=False)[0]
    video_dur = probe_video(src).duration
    assert abs(audio_duration(res.wav) - video_dur) <= FRAME
    assert abs(audio_duration(res.mp4) - video_dur) <= FRAME + 1024 / 32000  # AAC frames are 1024 samples
    assert abs(probe_video(res.mp4).duration - video_dur) < 1e-6  # video stream copied untouched
    fr = 50
    expected_windows = len(_window_plan(int(np.ceil(video_dur * fr)), 125, 62))
    assert res.windows == expected_windows


@pytest.mark.parametrize("h,w", [(112, 64), (34, 62)])
def test_portrait_and_odd_sizes(tmp_path, pipe, h, w):
    src = _video(tmp_path / "p.mp4", 2.0, h=h, w=w)
    res = generate_for_video(src, pipe, tmp_path / "out", top_k=16)
    assert abs(audio_duration(res.wav) - 2.0) <= FRAME
    assert probe_video(res.mp4).width == w and probe_video(res.mp4).height == h


def test_same_seed_same_audio_bit_for_bit(tmp_path, pipe):
    src = _video(tmp_path / "s.mp4", 4.0)
    a = generate_for_video(src, pipe, tmp_path / "a", top_k=16, seed=7)
    b = generate_for_video(src, pipe, tmp_path / "b", top_k=16, seed=7)
    c = generate_for_video(src, pipe, tmp_path / "c", top_k=16, seed=8)
    assert a.wav.read_bytes() == b.wav.read_bytes()
    assert a.wav.read_bytes() != c.wav.read_bytes()


def test_negative_tags_change_output(tmp_path, tag_pipe):
    src = _video(tmp_path / "n.mp4", 2.0)
    plain = generate_for_video(src, tag_pipe, tmp_path / "plain", top_k=16, seed=3, tags=["piano"])
    neg = generate_for_video(src, tag_pipe, tmp_path / "neg", top_k=16, seed=3, tags=["piano"],
                             negative=["drums"])
    again = generate_for_video(src, tag_pipe, tmp_path / "again", top_k=16, seed=3, tags=["piano"])
    assert plain.tags == ["piano"]
    assert plain.wav.read_bytes() == again.wav.read_bytes()
    assert plain.wav.read_bytes() != neg.wav.read_bytes()


def test_tags_on_model_without_tag_branch_is_one_line_error(tmp_path, pipe):
    from vmas.errors import VmasError

    with pytest.raises(VmasError, match="no tag branch"):
        generate_for_video(_video(tmp_path / "t.mp4", 1.0), pipe, tmp_path, tags=["piano"])


def test_cli_skips_corrupt_file_and_exits_nonzero(tmp_path, capsys):
    good1 = _video(tmp_path / "good1.mp4", 1.5)
    good2 = _video(tmp_path / "good2.mp4", 1.5, seed=1)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good1.read_bytes()[:600])  # truncated
    out = tmp_path / "out"
    rc = main(["generate", str(good1), str(bad), str(good2), "-o", str(out), "--top-k", "16", "-q",
               "--model", "vmas-debug-random"])
    err = capsys.readouterr().err
    assert rc == 1
    skip_lines = [line for line in err.splitlines() if line.startswith("skipping")]
    assert len(skip_lines) == 1 and "bad.mp4" in skip_lines[0]
    assert (out / "good1.mp4").exists() and (out / "good2.mp4").exists() and not (out / "bad.mp4").exists()


def test_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    for flag in ["--cfg", "--top-k", "--negative", "--tempo", "--batch-size", "--device", "--auto-tags"]:
        assert flag in text
    flat = " ".join(text.split())  # argparse wraps lines
    assert "the model's generation.cfg" in flat and "the model's generation.top_k" in flat


def test_batch_generation_matches_lengths(tmp_path, pipe):
    a, b = _video(tmp_path / "a.mp4", 1.0), _video(tmp_path / "b.mp4", 3.5, seed=2)
    res = generate_for_videos([a, b], pipe, tmp_path / "out", dataclasses.replace(GenerationRequest(), top_k=16),
                              batch_size=2, progress=False)
    for r, src in zip(res, [a, b]):
        assert abs(audio_duration(r.wav) - probe_video(src).duration) <= FRAME
    assert res[0].windows == res[1].windows == len(_window_plan(round(probe_video(b).duration * 50), 125, 62))


def test_sampling_defaults_come_from_the_model_config():
    from vmas.config import GenerationConfig
    from vmas.generate import GenerationRequest

    gen = GenerationConfig(cfg=2.5, top_k=50, top_p=0.0, temperature=0.9)
    r = GenerationRequest().resolved(gen)
    assert (r.cfg, r.top_k, r.top_p, r.temperature) == (2.5, 50, 0.0, 0.9)
    r = GenerationRequest(cfg=1.0, top_k=0).resolved(gen)  # explicit values win, 0 included
    assert (r.cfg, r.top_k, r.temperature) == (1.0, 0, 0.9)


def test_tempo_becomes_a_beat_grid_continued_across_windows(tmp_path):
    """With the beat condition, --tempo 96 reaches every window as one grid (31.25 frames per beat at 50 Hz, first
    beat at 0.25 s) evaluated from the window's own start frame, and it changes the music."""
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "debug.yaml", ["model.tags.enabled=true", "model.tags.text_encoder=minilm",
                                               "model.tags.text_dim=384", "model.lm.beat_condition=true"])
    p = load_pretrained(None, config=cfg, random_note="debug+beat")
    torch.nn.init.normal_(p.model.fuser.beat_proj.weight, std=1.0)
    calls = []
    real = p.model.generate

    def spy(*args, **kwargs):
        calls.append((kwargs.get("beat"), kwargs.get("beat_start")))
        return real(*args, **kwargs)

    p.model.generate = spy
    src = _video(tmp_path / "b.mp4", 4.0)
    fast = generate_for_video(src, p, tmp_path / "fast", top_k=16, seed=3, tempo=96)
    assert fast.windows == len(calls) >= 2
    for beat, _ in calls:
        torch.testing.assert_close(beat, torch.tensor([[31.25, 12.5]]))
    assert [s for _, s in calls] == [s for s, _ in _window_plan(200, 125, 62)]  # absolute window starts
    calls.clear()
    plain = generate_for_video(src, p, tmp_path / "plain", top_k=16, seed=3)
    assert all(beat is None for beat, _ in calls)  # no tempo asked: no grid
    assert fast.wav.read_bytes() != plain.wav.read_bytes()
    calls.clear()  # --beat-from-video: the requested tempo keeps its period, the picture's motion peaks give the phase
    from vmas.beat_grids import video_grid

    generate_for_video(src, p, tmp_path / "bfv", top_k=16, seed=3, tempo=96, beat_from_video=True)
    want = video_grid(src, 4.0, 50.0, bpm=96.0)
    for beat, _ in calls:
        torch.testing.assert_close(beat, torch.tensor([want]))
    assert want[0] == 31.25


def test_request_overrides_every_sampling_param_and_resolves_from_the_spec():
    from vmas.builders import build_generation_spec
    from vmas.sampling import SamplingParams

    fields = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
    assert all(fields[name] is None for name in SamplingParams.names())  # each one optional: None = the model's
    cfg = load_config(CONFIGS / "synthmv_tiny.yaml")
    spec = build_generation_spec(cfg)
    assert (spec.window_seconds, spec.fps, spec.image_size) == (cfg.data.clip_seconds, cfg.data.fps,
                                                                cfg.data.image_size)
    req = GenerationRequest(top_k=7, guide="tags").resolved(spec)
    assert req.sampling == dataclasses.replace(cfg.generation.sampling, top_k=7, guide="tags")
    assert req.beat_from_video == cfg.generation.beat_from_video
