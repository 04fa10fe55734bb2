"""Condition fuser: projections, learned null tokens, independent video/tag dropout and their masks."""
import torch

from vmas.modules.conditioning import ConditionFuser
from vmas.modules.transformer import sin_embedding


def _fuser(tag_dim=6):
    torch.manual_seed(0)
    return ConditionFuser(video_dim=5, dim=8, tag_dim=tag_dim)


def test_kept_condition_is_projection_plus_positions():
    f = _fuser(tag_dim=0)
    video = torch.randn(2, 3, 5)
    cond, mask = f(video)
    expected = f.video_proj(video) + sin_embedding(torch.arange(3), 8)
    torch.testing.assert_close(cond, expected)
    assert mask.all() and cond.shape == (2, 3, 8)


def test_time_aligned_video_positions_share_the_lm_table():
    # 48 tokens over a 5 s window at 50 Hz = 250 LM steps: token i covers steps [i, i + 1) * 250 / 48
    torch.manual_seed(0)
    f = ConditionFuser(video_dim=5, dim=64, steps_per_clip=250)
    pos = f.video_token_positions(48)
    assert abs(float(pos[0]) - 0.5 * 250 / 48) < 1e-5 and abs(float(pos[47]) - 47.5 * 250 / 48) < 1e-4
    video = torch.randn(1, 48, 5)
    cond, _ = f(video)
    torch.testing.assert_close(cond - f.video_proj(video), sin_embedding(pos, 64)[None])
    # the key of the token whose span holds LM step s matches the LM's position vector at s best
    lm_pos = sin_embedding(torch.arange(250), 64)  # what the LM adds to its step-s input
    best = (lm_pos @ sin_embedding(pos, 64).T).argmax(dim=1)  # [250] token most similar to each step
    want = torch.div(torch.arange(250) * 48, 250, rounding_mode="floor")
    assert (best - want).abs().max() <= 1


def test_all_four_drop_combinations_reach_decoder_with_right_masks():
    f = _fuser()
    video, tags = torch.randn(4, 3, 5), torch.randn(4, 2, 6)
    tag_mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    drop_v = torch.tensor([False, True, False, True])
    drop_t = torch.tensor([False, False, True, True])
    cond, mask = f(video, tags, tag_mask, drop_video=drop_v, drop_tags=drop_t)
    assert cond.shape == (4, 5, 8)
    # sample 0: both kept
    assert mask[0].tolist() == [True, True, True, True, True]
    # sample 1: video dropped -> [null, -, -], tags kept with their own padding mask
    assert mask[1].tolist() == [True, False, False, True, False]
    torch.testing.assert_close(cond[1, 0], f.null_video)
    torch.testing.assert_close(cond[1, 3], f.tag_proj(tags[1, 0]))
    # sample 2: tags dropped -> [null, -]
    assert mask[2].tolist() == [True, True, True, True, False]
    torch.testing.assert_close(cond[2, 3], f.null_tags)
    # sample 3: both dropped = the CFG unconditional branch
    assert mask[3].tolist() == [True, False, False, True, False]
    torch.testing.assert_close(cond[3, 0], f.null_video)
    torch.testing.assert_close(cond[3, 3], f.null_tags)


def test_missing_tags_use_null_token_and_null_is_learned():
    f = _fuser()
    video = torch.randn(2, 3, 5)
    cond, mask = f(video, None)
    torch.testing.assert_close(cond[:, 3], f.null_tags.expand(2, 8))
    # an all-padding tag row also falls back to the null tag
    cond2, mask2 = f(video, torch.randn(2, 2, 6), torch.zeros(2, 2, dtype=torch.bool))
    torch.testing.assert_close(cond2[:, 3], f.null_tags.expand(2, 8))
    assert mask2[:, 3].all() and not mask2[:, 4].any()
    # gradients reach the null tokens: the unconditional branch is trained
    cond[:, 3].sum().backward()
    assert f.null_tags.grad is not None and f.null_tags.grad.abs().sum() > 0


def test_step_condition_picks_the_token_of_each_steps_time():
    torch.manual_seed(0)
    f = ConditionFuser(video_dim=5, dim=8, steps_per_clip=250, step_video=True)
    video = torch.randn(2, 24, 5)  # 24 tokens over 250 steps: token j covers steps [j * 250/24, (j+1) * 250/24)
    out = f.step_condition(video, num_steps=253)  # the delay pattern has 3 steps past the window
    proj = f.step_proj(video)
    for s, j in [(0, 0), (10, 0), (11, 1), (124, 11), (125, 12), (249, 23), (252, 23)]:
        torch.testing.assert_close(out[:, s], proj[:, j])
    dropped = f.step_condition(video, 253, drop_video=torch.tensor([True, False]))
    assert dropped[0].abs().max() == 0 and torch.equal(dropped[1], out[1])  # no video -> nothing added
    assert ConditionFuser(video_dim=5, dim=8, steps_per_clip=250).step_condition(video, 253) is None


def test_step_interp_blends_the_two_enclosing_tokens():
    torch.manual_seed(0)
    f = ConditionFuser(video_dim=3, dim=4, steps_per_clip=8, step_video=True, step_interp=True)
    video = torch.randn(1, 2, 3)  # 2 tokens over 8 steps: centres at steps 2 and 6
    p = f.step_proj(video)[0]  # [2, 4]
    out = f.step_condition(video, 8)[0]  # [8, 4]
    # step s sits at token coordinate s/4; blend weight (s/4 - 0.5) clamped to [0, 1] between the two centres
    for s, w in [(0, 0.0), (2, 0.0), (3, 0.25), (4, 0.5), (5, 0.75), (6, 1.0), (7, 1.0)]:
        torch.testing.assert_close(out[s], (1 - w) * p[0] + w * p[1])
    held = ConditionFuser(video_dim=3, dim=4, steps_per_clip=8, step_video=True)
    held.load_state_dict(f.state_dict(), strict=False)
    torch.testing.assert_close(held.step_condition(video, 8)[0, 3], p[0])  # the held token, no blend


def test_onset_oracle_adds_its_vector_at_onset_steps_and_drops_with_the_video():
    torch.manual_seed(0)
    f = ConditionFuser(video_dim=3, dim=4, onset_oracle=True)
    onsets = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    out = f.step_condition(torch.randn(2, 2, 3), 6, drop_video=torch.tensor([False, True]), onsets=onsets)
    vec = f.onset_proj.weight[:, 0]  # [4]
    torch.testing.assert_close(out[0, 1], vec)
    torch.testing.assert_close(out[0, 3], vec)
    assert out[0, [0, 2, 4, 5]].abs().sum() == 0 and out[1].abs().sum() == 0  # no onset / dropped video
