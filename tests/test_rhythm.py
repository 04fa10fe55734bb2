"""Beat-grid tempo condition (issue 11): grid fitting, features, the fuser/VMAS plumbing, and that a tiny LM learns
to put notes on a requested grid it never saw in training."""
import math

import numpy as np
import pytest
import torch

from vmas import beat_grids
from vmas.modules import rhythm
from vmas.modules.conditioning import ConditionFuser
from vmas.modules.patterns import DelayPattern


def _onsets(T, period, first, offbeats=(), jitter=None, seed=0):
    """Bool onset mask: a note on every beat of the grid, plus the off-beat eighths of the listed beats."""
    rng = np.random.default_rng(seed)
    on = np.zeros(T, bool)
    times = [first + k * period for k in range(int((T - first) / period) + 1)]
    times += [first + (k + 0.5) * period for k in offbeats]
    for t in times:
        f = int(round(t + (rng.integers(-jitter, jitter + 1) if jitter else 0)))
        if 0 <= f < T:
            on[f] = True
    return on


def test_fit_first_beat_prefers_on_beats_over_offbeats():
    # 100 BPM at 50 Hz = 30 frames per beat, first beat at frame 7, off-beat eighths on 3 of 9 beats
    on = _onsets(250, 30.0, 7, offbeats=(1, 3, 4))
    assert rhythm.fit_first_beat(on, 30.0) == 7.0
    assert rhythm.fit_first_beat(np.flatnonzero(on), 30.0) == 7.0  # frame indices work too
    # non-integer period with +-1 frame jitter (SynthMV rounds onsets to 25 fps): within a frame of the truth
    on = _onsets(250, 31.25, 12.5, offbeats=(0, 2, 5), jitter=1, seed=3)
    first = rhythm.fit_first_beat(on, 31.25)
    assert min(abs(first - 12.5), 31.25 - abs(first - 12.5)) <= 1.0


def test_estimate_period_from_onsets():
    assert rhythm.estimate_period(_onsets(250, 30.0, 7, offbeats=(1, 3, 4)), 50.0) == 30.0
    assert abs(rhythm.estimate_period(_onsets(500, 25.0, 3, jitter=1, seed=1), 50.0) - 25.0) <= 1.0
    assert rhythm.estimate_period(np.zeros(100, bool), 50.0) is None


def test_beat_features_by_hand():
    beat = torch.tensor([[30.0, 7.0], [float("nan"), float("nan")]])
    f = rhythm.beat_features(beat, 40)
    assert f.shape == (2, 40, rhythm.NUM_FEATURES)
    torch.testing.assert_close(f[0, 7], torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0]))  # on the beat
    torch.testing.assert_close(f[0, 22], torch.tensor([0.0, -1.0, 0.0, 1.0, 1.0]), atol=1e-5, rtol=0)  # half-way
    torch.testing.assert_close(f[0, 14], torch.tensor([math.sin(2 * math.pi * 7 / 30), math.cos(2 * math.pi * 7 / 30),
                                                       math.sin(4 * math.pi * 7 / 30), math.cos(4 * math.pi * 7 / 30),
                                                       1.0]))
    assert f[1].abs().sum() == 0  # no grid -> zeros (the null)
    # a window starting at frame 100 continues the same grid
    torch.testing.assert_close(rhythm.beat_features(beat, 20, start=100)[0], rhythm.beat_features(beat, 120)[0, 100:],
                               atol=1e-4, rtol=0)


def test_grids_from_tags_and_onsets():
    on = torch.from_numpy(np.stack([_onsets(250, 30.0, 7, offbeats=(2,)), _onsets(250, 25.0, 4), np.zeros(250, bool)]))
    grids = beat_grids.clip_grids(on, [["piano", "100 BPM"], ["calm"], ["120 BPM"]], 50.0)
    torch.testing.assert_close(grids[0], torch.tensor([30.0, 7.0]))  # tempo from the tag, phase from the onsets
    torch.testing.assert_close(grids[1], torch.tensor([25.0, 4.0]))  # no tag: tempo from the onsets
    assert torch.isnan(grids[2]).all()  # no onsets: no grid
    req = beat_grids.request_grids([["piano", "96 bpm"], ["calm"]], 50.0)
    torch.testing.assert_close(req[0], torch.tensor([31.25, rhythm.FIRST_BEAT_S * 50.0]))
    assert torch.isnan(req[1]).all()
    assert beat_grids.request_grids([["calm"], []], 50.0) is None


def test_fuser_beat_path_drop_equals_none_and_adds_to_video():
    torch.manual_seed(0)
    f = ConditionFuser(video_dim=5, dim=8, steps_per_clip=50, step_video=True, beat_grid=True)
    video, beat = torch.randn(2, 4, 5), torch.tensor([[10.0, 3.0], [12.5, 0.0]])
    v_only = f.step_condition(video, 50)
    both = f.step_condition(video, 50, beat=beat)
    torch.testing.assert_close(both - v_only, f.beat_proj(rhythm.beat_features(beat, 50)))
    dropped = f.step_condition(video, 50, beat=beat, drop_beat=torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], v_only[0])
    torch.testing.assert_close(dropped[1], both[1])
    nofuse = ConditionFuser(video_dim=5, dim=8, beat_grid=True)
    assert nofuse.step_condition(video, 50) is None  # no video path, no grid -> nothing added
    torch.testing.assert_close(nofuse.step_condition(None, 50, beat=beat), nofuse.beat_proj(rhythm.beat_features(beat, 50)))


def test_vmas_forward_reads_the_grid_and_dropout_removes_it(debug_cfg):
    from vmas.builders import build_model

    cfg = debug_cfg
    cfg.model.lm.beat_condition = True
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.fuser.beat_proj.weight)
    B, T = 2, 20
    codes = torch.randint(0, cfg.model.lm.card, (B, cfg.model.lm.n_q, T))
    frames = torch.randint(0, 255, (B, cfg.data.num_frames, cfg.data.image_size, cfg.data.image_size, 3), dtype=torch.uint8)
    beat = torch.tensor([[10.0, 2.0], [8.0, 5.0]])
    plain = model(frames, codes).logits
    gridded = model(frames, codes, beat=beat).logits
    assert (gridded - plain).abs().max() > 1e-3
    dropped = model(frames, codes, beat=beat, drop_beat=torch.tensor([True, False])).logits
    torch.testing.assert_close(dropped[0], plain[0])
    torch.testing.assert_close(dropped[1], gridded[1])
    # training draws the beat dropout per clip
    model.train()
    model.beat_dropout = 1.0
    keep = dict(drop_video=torch.zeros(B, dtype=torch.bool), drop_tags=torch.zeros(B, dtype=torch.bool))
    torch.testing.assert_close(model(frames, codes, beat=beat, **keep).logits, model(frames, codes, **keep).logits)


def _grid_batch(B, T, rng):
    """Codes with one 'note' token (1) on every beat of a random grid and 0 elsewhere, plus the grids."""
    period = torch.from_numpy(rng.uniform(6.0, 14.0, B)).float()
    first = torch.from_numpy(rng.uniform(0.0, 1.0, B)).float() * period
    frames = torch.arange(T).float()
    k = ((frames[None] - first[:, None]) / period[:, None]).round()
    on = (frames[None] - (first[:, None] + k * period[:, None])).abs() < 0.5
    return on.long()[:, None], torch.stack([period, first], dim=1)


def test_tiny_lm_learns_to_follow_an_unseen_tempo():
    """Train a 2-layer LM on notes placed on random grids (periods 6-14 frames); then a requested grid of 9.3
    frames (a tempo never seen exactly) must come out note for note. This is the mechanism behind tempo control:
    if the grid did not reach the LM or were misaligned with the steps, the notes would not land on it."""
    from vmas.models.lm import MusicLM

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dim, T = 32, 64
    lm = MusicLM(dim=dim, num_layers=2, num_heads=2, ffn_dim=64, n_q=1, card=2)
    fuser = ConditionFuser(video_dim=4, dim=dim, beat_grid=True)
    pattern = DelayPattern(1)
    opt = torch.optim.AdamW([*lm.parameters(), *fuser.parameters()], lr=3e-3)
    for _ in range(150):
        codes, beat = _grid_batch(16, T, rng)
        cond, mask = fuser(None, batch_size=16)
        seq, valid = pattern.build(codes, lm.card)
        logits = lm(seq, cond, mask, fuser.step_condition(None, seq.shape[-1], beat=beat))
        loss = torch.nn.functional.cross_entropy(logits[:, :, valid[0]].reshape(-1, 2), seq[:, :, valid[0]].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.eval()
    beat = torch.tensor([[9.3, 4.0], [12.0, 0.0]])
    with torch.no_grad():
        cond, mask = fuser(None, batch_size=2)
        out = lm.generate(cond, mask, num_frames=T, cfg=1.0, top_k=1,
                          step_cond=fuser.step_condition(None, pattern.num_steps(T), beat=beat))  # greedy
    for b, (period, first) in enumerate(beat.tolist()):
        want = {round(first + k * period) for k in range(int((T - 1 - first) / period) + 1)}
        got = set(torch.nonzero(out[b, 0]).flatten().tolist())
        assert len(got ^ want) <= 1, (sorted(got), sorted(want))


@pytest.fixture
def debug_cfg():
    from pathlib import Path

    from vmas.config import load_config

    return load_config(Path(__file__).resolve().parent.parent / "configs" / "debug.yaml")


def test_fit_grid_refines_a_fractional_period():
    # 94.6 BPM at 50 Hz = 31.71 frames per beat: the autocorrelation lag is whole frames, the fit must not drift
    on = _onsets(500, 31.71, 9.0, offbeats=(1, 4, 6, 9), jitter=0)
    period, first = rhythm.fit_grid(on, 50.0)
    assert abs(period - 31.71) < 0.1 and abs(first - 9.0) <= 0.5
    assert rhythm.fit_grid(on, 50.0, bpm=120.0)[0] == 25.0  # a given tempo is kept
    assert rhythm.fit_grid(np.zeros(100, bool), 50.0) is None


def test_video_grid_finds_the_beat_of_a_synthmv_clip(tmp_path):
    """SynthMV: every note is a visual jump, so the grid read from the picture's motion peaks must have the clip's
    tempo (within 1.5 %) and put its lines on the labelled on-beat notes (within 1.5 code frames)."""
    from datasets.synthmv import generate_clip

    for seed, cls in ((3, 1), (5, 2)):
        clip = generate_clip(seed, cls, 5.0, 64, out_path=tmp_path / f"c{seed}.mp4")
        lab = clip.labels
        period, first = beat_grids.video_grid(tmp_path / f"c{seed}.mp4", 5.0, 50.0)
        bpm = 60 * 50.0 / period
        assert abs(bpm - lab["tempo_bpm"]) <= 0.015 * lab["tempo_bpm"], (bpm, lab["tempo_bpm"])
        true_period = 60 * 50.0 / lab["tempo_bpm"]
        t0 = lab["events"][0]["code_frame"]  # the first note is always on a beat
        beats = t0 + true_period * np.arange(int((250 - t0) / true_period) + 1)  # true beat lines in the window
        d = np.mod(beats - first, period)
        d = np.minimum(d, period - d)
        assert d.max() <= 2.0, (beats, first, period)  # every beat of the clip sits on the grid (+-2 code frames)
