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


@pytest.mark.parametrize("controls", [{}, {"cuts": "2.0"}, {"hits": "1.0,2.5"}, {"beat_from_video": True}],
                         ids=["plain", "cuts", "hits", "beat_from_video"])
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
