"""Motion-conditioned models on every generation path (issue 32 §3): plain ``vmas generate``, ``--cuts``,
``--hits``, ``--beat-from-video``, the web page's request and ``vmas.evaluation``. Each path must feed the picture's
motion curve to the LM: with the motion projection zeroed, the same request and seed give other music."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vmas.app import AppLimits, request_controls, run_request
from vmas.config import load_config
from vmas.evaluation import generate_windows
from vmas.generate import generate_for_video
from vmas.hub import load_pretrained

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def pipes():
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "debug.yaml", ["model.lm.motion_condition=true", "model.lm.beat_condition=true"])
    on = load_pretrained(None, config=cfg, random_note="debug+motion")
    torch.nn.init.normal_(on.model.fuser.motion_proj.weight, std=3.0)  # random init is tiny: make motion matter
    off = load_pretrained(None, config=cfg, random_note="debug+motion, projection zeroed")
    off.model.load_state_dict(on.model.state_dict())
    torch.nn.init.zeros_(off.model.fuser.motion_proj.weight)
    return on, off


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from test_generate import _video

    frames = _video(tmp_path_factory.mktemp("v") / "moving.mp4", 4.0, seed=3)  # random frames: motion everywhere
    return frames


def _music(pipe, video, out: Path, **controls) -> np.ndarray:
    res = generate_for_video(video, pipe, out, mix="replace", loudness=None, seed=2, **controls)
    return sf.read(res.wav, dtype="float32")[0]


@pytest.mark.parametrize("controls", [{}, {"cuts": "2.0"}, {"beat_from_video": True}],
                         ids=["plain", "cuts", "beat_from_video"])  # hits: test_hits_motion_off_...
def test_cli_paths_use_the_motion_curve(pipes, video, tmp_path, controls):
    on, off = (_music(p, video, tmp_path / name, **controls) for p, name in zip(pipes, ("on", "off")))
    assert on.shape == off.shape == (4 * 32000,) and np.isfinite(on).all()
    assert np.abs(on - off).max() > 1e-3


def test_web_request_and_evaluation_use_the_motion_curve(pipes, video, tmp_path):
    limits = AppLimits()
    got = [run_request(p, str(video), request_controls(seed=2, mix="replace", loudness=0), limits,
                       tmp_path / name) for p, name in zip(pipes, ("on", "off"))]
    a, b = (sf.read(r.wav, dtype="float32")[0] for r in got)
    assert np.abs(a - b).max() > 1e-3
    ev_on, ev_off = (generate_windows(p, [{"video": str(video)}], seed=2)[0] for p in pipes)
    assert np.abs(ev_on - ev_off).max() > 1e-3
    # and evaluation equals the web page's first window (same engine, same seed)
    n = min(ev_on.size, a.size) // 2
    scale = min(1.0, 0.99 / np.abs(ev_on).max())
    assert dataclasses.is_dataclass(got[0]) and np.allclose(a[:n], ev_on[:n] * scale, atol=2 / 32768)


def test_the_flow_network_runs_on_the_models_device(pipes):
    """``VMAS.video_motion`` hands the model's device to the motion function (RAFT would otherwise run on the CPU
    while the model generates on a GPU): the call carries it, and the curve comes back there."""
    on, _ = pipes
    seen = []
    real = on.model.motion_fn

    def recording(frames, device):
        seen.append(device)
        return real(frames, device=device)

    on.model.motion_fn = recording
    try:
        frames = torch.randint(0, 256, (2, 6, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        motion = on.model.video_motion(frames)
    finally:
        on.model.motion_fn = real
    device = on.model.fuser.motion_proj.weight.device
    assert seen == [str(device)] * 2 and motion.device == device and motion.shape == (2, 5)
    assert torch.equal(motion[1], real(frames[1]))  # the same curve as the function called directly


@pytest.fixture(scope="module")
def tag_pipes(pipes):
    """The motion pipes with a tag branch (a tempo is asked for as a tag): projection on / zeroed, same weights."""
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "debug.yaml", ["model.lm.motion_condition=true", "model.lm.beat_condition=true",
                                               "model.tags.enabled=true", "model.tags.text_encoder=minilm",
                                               "model.tags.text_dim=384"])
    on = load_pretrained(None, config=cfg, random_note="debug+motion+tags")
    torch.nn.init.normal_(on.model.fuser.motion_proj.weight, std=3.0)
    off = load_pretrained(None, config=cfg, random_note="debug+motion+tags, projection zeroed")
    off.model.load_state_dict(on.model.state_dict())
    torch.nn.init.zeros_(off.model.fuser.motion_proj.weight)
    return on, off


def test_a_requested_tempo_leaves_the_motion_curve_out(tag_pipes, video, tmp_path):
    """``--tempo`` sets the note timing, so the picture's motion curve is left out for that clip (the condition's
    dropped value, zero): the model with its motion projection then gives exactly the music of the same model with
    the projection zeroed. The beat grid still reaches the LM (another tempo gives other music), and
    ``--beat-from-video``, whose grid comes from the same motion, keeps the curve (test above)."""
    on, off = (_music(p, video, tmp_path / name, tempo=120) for p, name in zip(tag_pipes, ("on", "off")))
    np.testing.assert_array_equal(on, off)
    assert np.abs(on - _music(tag_pipes[0], video, tmp_path / "on90", tempo=90)).max() > 1e-3  # the grid counts
    plain = [_music(p, video, tmp_path / f"plain_{name}") for p, name in zip(tag_pipes, ("on", "off"))]
    assert np.abs(plain[0] - plain[1]).max() > 1e-3  # without a tempo the curve is there


def test_motion_off_zeroes_only_the_marked_clips(pipes, video):
    """VMAS.generate(motion_off=[B]) is motion=0 for the marked rows and leaves the others as they were."""
    from vmas.data import media

    model = pipes[0].model
    spec = pipes[0].spec
    frames, _, _ = media.read_video_frames(video, fps=spec.fps, size=spec.image_size, start=0.0,
                                           duration=spec.window_seconds)
    frames = torch.stack([frames, frames])  # [2, T, H, W, 3]
    motion = model.video_motion(frames)  # [2, T-1]
    assert motion.abs().sum() > 0

    def run(**kw):
        gens = [torch.Generator().manual_seed(0) for _ in range(2)]
        return model.generate(frames, num_frames=20, generator=gens, top_k=5, **kw)

    off = run(motion_off=torch.tensor([True, False]))
    by_hand = run(motion=torch.stack([torch.zeros_like(motion[0]), motion[1]]))
    assert torch.equal(off, by_hand)
    assert not torch.equal(off[0], run()[0])


def test_hits_motion_off_leaves_the_curve_out_for_hit_clips_only(pipes, video, tmp_path, monkeypatch):
    """``structure.HITS_MOTION = "off"`` (the default): a clip with hits gets the zeroed curve (music = the
    projection-zeroed model's), the same clip with cuts only keeps it; ``"keep"`` feeds the curve beside the grid."""
    from vmas import structure

    on, off = pipes
    assert structure.HITS_MOTION == "off"
    hit_on, hit_off = (_music(p, video, tmp_path / f"h{n}", hits="1.0,2.5") for n, p in enumerate(pipes))
    np.testing.assert_array_equal(hit_on, hit_off)
    cut_on, cut_off = (_music(p, video, tmp_path / f"c{n}", cuts="2.0") for n, p in enumerate(pipes))
    assert np.abs(cut_on - cut_off).max() > 1e-3
    monkeypatch.setattr(structure, "HITS_MOTION", "keep")
    assert np.abs(_music(on, video, tmp_path / "keep", hits="1.0,2.5") - hit_on).max() > 1e-3
