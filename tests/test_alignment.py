"""Alignment signals on constructed inputs whose answer is known: click tracks, a jumping square, hand-made curves."""
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from vmas.alignment import (
    _resolve_raft_weights,
    beat_weights,
    load_raft,
    music_beats,
    precompute_alignment,
    video_beats,
    video_motion,
)
from vmas.config import LossConfig
from vmas.errors import CheckpointError, DataError

SR = 32000



def click_track(times, seconds, sr=SR, seed=0):
    """Decaying noise bursts (10 ms) starting at ``times`` over a faint noise floor."""
    rng = np.random.default_rng(seed)
    y = 1e-3 * rng.standard_normal(int(seconds * sr)).astype(np.float32)
    n = int(0.01 * sr)
    for t in times:
        i = int(round(t * sr))
        y[i:i + n] += rng.standard_normal(n).astype(np.float32) * np.exp(-np.arange(n) / 200.0).astype(np.float32)
    return y


def jumping_square(num_frames, jumps, size=32, step=(6, 5)):
    """uint8 [T, H, W, 3]: a white 10x10 square that moves by ``step`` pixels exactly at the frames in ``jumps``."""
    x = np.zeros((num_frames, size, size, 3), np.uint8)
    r, c = 4, 4
    for t in range(num_frames):
        if t in jumps:
            r, c = r + step[0], c + step[1]
        x[t, r:r + 10, c:c + 10] = 255
    return x


# --------------------------------------------------------------------------------------------------- music beats
def test_music_beats_click_track_within_one_frame():
    times = [0.30, 0.77, 1.50, 2.01, 2.62, 3.33]
    beats = music_beats(click_track(times, 4.0), SR)  # numpy in
    assert beats.dtype == torch.bool and beats.shape == (200,)  # 4 s at 50 Hz
    found = torch.nonzero(beats).flatten().tolist()
    expected = [math.floor(t * 50) for t in times]  # code frame whose span holds the click
    assert len(found) == len(expected)
    for f, e in zip(found, expected):
        assert abs(f - e) <= 1, (found, expected)


def test_music_beats_torch_input_custom_length_and_silence():
    y = torch.from_numpy(click_track([0.5, 1.0], 1.5))
    beats = music_beats(y[None], SR, num_frames=60)  # [1, N] accepted, output padded to 60
    found = torch.nonzero(beats).flatten().tolist()
    assert beats.shape == (60,) and len(found) == 2 and abs(found[0] - 25) <= 1 and abs(found[1] - 50) <= 1
    assert not music_beats(np.zeros(SR, np.float32), SR).any()
    with pytest.raises(DataError, match="mono"):
        music_beats(np.zeros((2, SR), np.float32), SR)


# --------------------------------------------------------------------------------------------------- motion
def test_farneback_motion_peaks_at_jumps_and_input_layouts_agree():
    frames = jumping_square(10, jumps=(3, 7))
    motion = video_motion(frames, flow="farneback")
    assert motion.shape == (9,) and motion.dtype == torch.float32
    # pairs (2->3) and (6->7) carry the jumps; every other pair shows an identical image (flow 0)
    assert sorted(torch.topk(motion, 2).indices.tolist()) == [2, 6]
    static = motion[[0, 1, 3, 4, 5, 7, 8]]
    assert float(static.max()) < 1e-3 and float(motion[[2, 6]].min()) > 0.5
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W] in [0, 1]
    torch.testing.assert_close(video_motion(as_float, flow="farneback"), motion)


def test_raft_random_weights_responds_exactly_at_jumps_and_chunking_is_invisible():
    from torchvision.models.optical_flow import raft_small

    model = raft_small(weights=None).eval()  # random weights (tests only); 32x32 input is resized to 128x128
    # the square jumps away at frame 2 and back at frame 3: pairs AA, AB, BA, AA
    frames = jumping_square(5, jumps=(2,))
    frames[3:] = frames[:2]
    motion = video_motion(frames, model=model, batch_size=3, num_flow_updates=2)  # chunks of 3 + 1 pairs
    assert motion.shape == (4,)
    # random weights cannot promise a *peak*, but identical image pairs give identical outputs whatever the
    # weights, so the curve must change exactly (and only) at the jumps
    torch.testing.assert_close(motion[0], motion[3], rtol=1e-5, atol=1e-6)  # different chunks: float noise only
    assert float((motion[1] - motion[0]).abs()) > 1e-4 and float((motion[2] - motion[0]).abs()) > 1e-4
    single = video_motion(frames[1:3], model=model, batch_size=1, num_flow_updates=2)  # unbatched pair AB
    torch.testing.assert_close(single, motion[1:2], rtol=1e-4, atol=1e-5)


class ConstantFlow(nn.Module):
    """Stand-in RAFT that returns flow (3, 4) px everywhere and records what it was given."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, a, b, num_flow_updates=12):
        self.calls.append((tuple(a.shape), float(a.min()), float(a.max()), num_flow_updates))
        flow = torch.zeros(a.shape[0], 2, *a.shape[-2:])
        flow[:, 0], flow[:, 1] = 3.0, 4.0
        return [flow * 0.5, flow]  # RAFT returns every iteration's estimate; the last one is used


def test_raft_resizes_to_valid_size_rescales_flow_and_chunks():
    frames = np.zeros((6, 40, 136, 3), np.uint8)
    frames[:, :, :68] = 255  # values 0 and 255 -> RAFT's [-1, 1]
    model = ConstantFlow()
    motion = video_motion(frames, model=model, batch_size=2, num_flow_updates=5)
    # 40 -> 128 rows (minimum size), 136 stays (divisible by 8): v shrinks by 40/128, u unchanged
    expected = math.hypot(3.0 * 136 / 136, 4.0 * 40 / 128)
    torch.testing.assert_close(motion, torch.full((5,), expected))
    assert [c[0] for c in model.calls] == [(2, 3, 128, 136), (2, 3, 128, 136), (1, 3, 128, 136)]
    assert all(c[1] == -1.0 and c[2] == 1.0 and c[3] == 5 for c in model.calls)


def test_video_motion_rejects_bad_input():
    with pytest.raises(DataError, match="at least 2 frames"):
        video_motion(np.zeros((1, 8, 8, 3), np.uint8), flow="farneback")
    with pytest.raises(DataError, match="unknown flow"):
        video_motion(np.zeros((2, 8, 8, 3), np.uint8), flow="pwc")
    with pytest.raises(DataError, match=r"\[T,H,W,3\]"):
        video_motion(np.zeros((2, 3, 8, 8), np.uint8), flow="farneback")
    with pytest.raises(DataError, match=r"in \[0, 1\], got values in \[255, 255\]"):
        video_motion(torch.full((2, 3, 8, 8), 255.0), flow="farneback")


# --------------------------------------------------------------------------------------------------- RAFT weights
def test_load_raft_from_local_torchvision_checkpoint(tmp_path, caplog):
    from torchvision.models.optical_flow import raft_large, raft_small

    reference = raft_small(weights=None)
    path = tmp_path / "raft_small_C_T_V2.pth"
    torch.save(reference.state_dict(), path)  # torchvision publishes plain state dicts
    loaded = load_raft("raft_small", str(path))
    assert not loaded.training
    for (name, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    wrong = tmp_path / "large.pth"
    torch.save(raft_large(weights=None).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="raft_small vs raft_large"):
        load_raft("raft_small", str(wrong))
    load_raft.cache_clear()  # another test of this process may have built it already (cached: no second warning)
    with caplog.at_level(logging.WARNING, logger="vmas.alignment"):
        load_raft("raft_small", "random", "cpu")
    assert "random weights" in caplog.text


def test_raft_weight_names_resolve_and_failures_are_one_line(monkeypatch):
    from torchvision.models import optical_flow
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

    assert _resolve_raft_weights("raft_small", "C_T_V2") == (Raft_Small_Weights.C_T_V2, None)
    assert _resolve_raft_weights("raft_small", "DEFAULT") == (Raft_Small_Weights.DEFAULT, None)
    assert _resolve_raft_weights("raft_large", "Raft_Large_Weights.C_T_SKHT_V2") == (Raft_Large_Weights.C_T_SKHT_V2, None)
    assert _resolve_raft_weights("raft_large", "random") == (None, None)
    with pytest.raises(CheckpointError, match="not a file and not one of"):
        load_raft("raft_small", "C_T_V9")

    def offline(**kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(optical_flow, "raft_small", offline)
    with pytest.raises(CheckpointError, match="download https://download.pytorch.org/models/raft_small_C_T_V2"):
        load_raft("raft_small", "C_T_V2", "meta")  # a cache key no other test uses


# --------------------------------------------------------------------------------------------------- video beats
def test_video_beats_hand_computed():
    # 11 video frames at 10 fps, 50 Hz codes: motion[j] sits at code frame 5 * (j + 1)
    motion = np.array([0, 0, 5, 0, 0, 0, 1, 0, 0, 0], np.float32)
    bv = video_beats(motion, num_frames=60, window=5, fps=10.0)
    assert bv.dtype == torch.bool and bv.shape == (60,)
    assert torch.nonzero(bv).flatten().tolist() == [15, 35]  # flat zero stretches are not beats
    # default fps: 11 frames spread over the same 55 code frames as the music -> same grid
    assert torch.equal(video_beats(motion, num_frames=55, window=5), bv[:55])


def test_video_beats_window_merges_close_peaks_and_plateaus_are_not_beats():
    motion = torch.tensor([0.0, 3.0, 0.0, 2.0, 0.0, 0.0])  # fps 25 -> 2 code frames per video frame: peaks at 4, 8
    assert torch.nonzero(video_beats(motion, 20, window=1, fps=25.0)).flatten().tolist() == [4, 8]
    assert torch.nonzero(video_beats(motion, 20, window=5, fps=25.0)).flatten().tolist() == [4]  # 8 is within ±5
    assert not video_beats(torch.full((9,), 2.5), 50, window=5).any()


# --------------------------------------------------------------------------------------------------- weights
def test_beat_weights_hand_computed_and_lambda_one():
    T = 40
    bm = torch.zeros(T, dtype=torch.bool)
    bm[[10, 20, 30]] = True
    bv = torch.zeros(T, dtype=torch.bool)
    bv[[13, 24, 30, 38]] = True  # 13 is 3 from 10 (aligned), 24 is 4 from 20 (not), 30 aligned
    w = beat_weights(bm, bv, delta=3, lam=0.5)
    expected = torch.full((T,), 0.5)
    expected[[10, 30]] = 1.0
    torch.testing.assert_close(w, expected, rtol=0, atol=0)
    assert torch.equal(beat_weights(bm, bv, delta=3, lam=1.0), torch.ones(T))
    with pytest.raises(DataError, match="same grid"):
        beat_weights(bm, bv[:-1])


def test_beat_weights_equal_direct_loop():
    g = torch.Generator().manual_seed(1)
    bm = torch.rand(200, generator=g) < 0.2
    bv = (torch.rand(200, generator=g) < 0.1).numpy()  # numpy accepted
    w = beat_weights(bm, bv, delta=2, lam=0.25)
    direct = [1.0 if bm[t] and bv[max(0, t - 2):t + 3].any() else 0.25 for t in range(200)]
    assert w.tolist() == direct


# --------------------------------------------------------------------------------------------------- per clip
def test_precompute_alignment_on_constructed_clip():
    # 2 s clip, 10 fps video with jumps at frames 5 and 14 (t = 0.5 s, 1.4 s); clicks at 0.5 s, 1.0 s, 1.4 s
    frames = jumping_square(20, jumps=(5, 14))
    wav = click_track([0.5, 1.0, 1.4], 2.0)
    cfg = LossConfig(beat_lambda=0.25, motion_flow="farneback")
    out = precompute_alignment(wav, SR, frames, fps=10.0, num_music_frames=100, cfg=cfg)
    assert set(out) == {"music_beats", "motion", "video_beats", "beat_weights"}
    assert out["music_beats"].shape == out["video_beats"].shape == out["beat_weights"].shape == (100,)
    assert out["motion"].shape == (19,)
    assert torch.nonzero(out["video_beats"]).flatten().tolist() == [25, 70]  # jump frames 5, 14 at 50/10 per frame
    # the clicks that coincide with a jump get weight 1, the lone click (1.0 s) and everything else 0.25
    ones = torch.nonzero(out["beat_weights"] == 1.0).flatten().tolist()
    assert len(ones) == 2 and abs(ones[0] - 25) <= 1 and abs(ones[1] - 70) <= 1
    assert int((out["beat_weights"] == 0.25).sum()) == 98
    # composition equals the individual functions
    bv = video_beats(out["motion"], 100, window=cfg.beat_window, fps=10.0)
    assert torch.equal(bv, out["video_beats"])
    assert torch.equal(beat_weights(out["music_beats"], bv, cfg.beat_delta, cfg.beat_lambda), out["beat_weights"])
