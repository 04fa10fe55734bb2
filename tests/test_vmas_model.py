"""Assembled VMAS model: condition dropout really happens in training, CFG uses the learned null, checkpoints load."""
from pathlib import Path

import pytest
import torch

from vmas.builders import build_codec, build_model
from vmas.config import config_to_dict, load_config
from vmas.errors import CheckpointError
from vmas.hub import load_pretrained

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "debug.yaml")
    codec = build_codec(cfg.model.codec)
    model = build_model(cfg, codec=codec)
    B, K, T = 3, cfg.model.lm.n_q, 20
    frames = torch.randint(0, 255, (B, cfg.data.num_frames, 32, 32, 3), dtype=torch.uint8)
    codes = torch.randint(0, cfg.model.lm.card, (B, K, T))
    return cfg, codec, model, frames, codes


def test_codebooks_come_from_the_codec(setup):
    cfg, codec, model, *_ = setup
    torch.testing.assert_close(model.codebooks, codec.codebooks())
    assert model.codebooks.shape == (cfg.model.codec.n_q, cfg.model.codec.bins, cfg.model.codec.dimension)


def test_condition_dropout_is_applied_in_training_forward(setup):
    _, _, model, frames, codes = setup
    Tv = model.encode_video(frames).shape[1]
    model.train()
    model.cond_dropout = 1.0
    out = model(frames, codes)
    assert out.cond_mask[:, 0].all() and not out.cond_mask[:, 1:Tv].any()  # only the null slot is attended
    # the logits equal the LM run on the null condition
    null, null_mask = model.fuser(out.video_tokens, drop_video=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(out.logits, model.lm(out.seq, null, null_mask))
    out.logits.sum().backward()
    assert model.fuser.null_video.grad.abs().sum() > 0  # the CFG branch is trained
    model.zero_grad()
    model.cond_dropout = 0.0
    assert model(frames, codes).cond_mask.all()
    model.cond_dropout = 0.3
    model.eval()
    assert model(frames, codes).cond_mask.all()  # never dropped at eval


def test_video_swap_pairs_tags_with_another_clips_video(setup):
    _, _, model, frames, codes = setup
    model.train()
    tags, tag_mask = torch.randn(3, 2, 6), torch.ones(3, 2, dtype=torch.bool)
    fuser = type(model.fuser)(model.encoder.out_dim, model.lm.dim, tag_dim=6)  # debug preset has no tag branch
    model.fuser, old_fuser = fuser, model.fuser
    try:
        model.video_swap_prob = 1.0
        keep = torch.zeros(3, dtype=torch.bool)
        out = model(frames, codes, tags, tag_mask, drop_video=keep, drop_tags=keep)
        vt = model.encode_video(frames)
        cond, mask = fuser(vt.roll(1, dims=0), tags, tag_mask)  # clip b sees clip b-1's video, its own tags
        torch.testing.assert_close(out.logits, model.lm(out.seq, cond, mask))
        assert not out.video_kept.any()  # left out of the contrastive loss
        drop = torch.tensor([True, False, False])  # a dropped condition is never swapped
        out = model(frames, codes, tags, tag_mask, drop_video=drop, drop_tags=keep)
        assert out.video_kept.tolist() == [False, False, False]
        out = model(frames, codes, tags, tag_mask, drop_video=keep, drop_tags=drop)
        assert out.video_kept.tolist() == [True, False, False]
        model.eval()
        assert model(frames, codes, tags, tag_mask).video_kept.all()  # never at inference
    finally:
        model.fuser, model.video_swap_prob = old_fuser, 0.0


def test_dropout_rate_matches_config(setup):
    _, _, model, *_ = setup
    model.train()
    torch.manual_seed(1)
    drops = model._drops(20000, 0.3, torch.device("cpu"))
    assert abs(drops.float().mean().item() - 0.3) < 0.01
    model.eval()
    assert model._drops(10, 0.3, torch.device("cpu")) is None


def test_forward_targets_follow_the_delay_pattern(setup):
    _, _, model, frames, codes = setup
    model.eval()
    out = model(frames, codes)
    K, S = out.valid.shape
    assert S == codes.shape[-1] + K - 1
    for k in range(K):  # codebook k at step s holds frame s - k
        torch.testing.assert_close(out.seq[:, k, k: k + codes.shape[-1]], codes[:, k])
        assert (out.seq[:, k, :k] == model.card).all()


def test_generate_with_cfg_1_equals_conditional_only(setup):
    _, _, model, frames, _ = setup
    model.eval()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = model.generate(frames, num_frames=6, cfg=1.0, top_k=5, generator=g1)
    tokens = model.encode_video(frames)
    cond, mask = model.fuser(tokens)
    b = model.lm.generate(cond, mask, num_frames=6, cfg=1.0, top_k=5, generator=g2)
    assert torch.equal(a, b) and a.shape == (3, 4, 6)


def test_inference_checkpoint_roundtrip(tmp_path, setup):
    cfg, codec, model, frames, codes = setup
    model.eval()
    path = tmp_path / "m.pt"
    torch.save({"config": config_to_dict(cfg), "model": model.state_dict(), "codec": codec.state_dict(),
                "meta": {"note": "test"}}, path)
    pipe = load_pretrained(path)
    assert pipe.note == "test"
    torch.testing.assert_close(pipe.model(frames, codes).logits, model(frames, codes).logits)
    wav = torch.randn(1, 1, 3200)
    assert torch.equal(pipe.codec.encode(wav), codec.encode(wav))


def test_bad_checkpoints_fail_with_one_line(tmp_path, setup):
    cfg, _, model, *_ = setup
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable vmas checkpoint"):
        load_pretrained(junk)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a vmas inference checkpoint"):
        load_pretrained(tmp_path / "other.pt")
    bad_cfg = config_to_dict(cfg)
    bad_cfg["model"]["lm"]["dim"] = 48
    torch.save({"config": bad_cfg, "model": model.state_dict()}, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit the config"):
        load_pretrained(tmp_path / "mismatch.pt")


def test_cross_plus_sum_fuse_adds_the_video_per_step_and_not_in_cfg_branches():
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "debug.yaml", ["model.lm.video_fuse=cross+sum"])
    model = build_model(cfg, codec=build_codec(cfg.model.codec)).eval()
    frames = torch.randint(0, 255, (2, cfg.data.num_frames, 32, 32, 3), dtype=torch.uint8)
    codes = torch.randint(0, cfg.model.lm.card, (2, cfg.model.lm.n_q, 20))
    out = model(frames, codes)
    vt = model.encode_video(frames)
    cond, mask = model.fuser(vt)
    S = out.seq.shape[-1]
    step = model.fuser.step_condition(vt, S)
    torch.testing.assert_close(out.logits, model.lm(out.seq, cond, mask, step))
    assert (out.logits - model.lm(out.seq, cond, mask)).abs().max() > 1e-4
    yes = torch.ones(2, dtype=torch.bool)
    null = model(frames, codes, drop_video=yes, drop_tags=yes)
    ncond, nmask = model.fuser(vt, drop_video=yes)
    torch.testing.assert_close(null.logits, model.lm(out.seq, ncond, nmask))  # CFG branch: no per-step video
    with pytest.raises(Exception, match="video_fuse"):
        build_model(load_config(CONFIGS / "debug.yaml", ["model.lm.video_fuse=sum"]))


def test_input_noise_corrupts_inputs_not_targets(setup):
    _, _, model, frames, codes = setup
    model.train()
    model.input_noise = 1.0
    try:
        keep = torch.zeros(3, dtype=torch.bool)
        torch.manual_seed(0)
        out = model(frames, codes, drop_video=keep, drop_tags=keep)
        seq, valid = model.pattern.build(codes, model.card)
        assert torch.equal(out.seq, seq)  # clean targets
        torch.manual_seed(0)
        noisy = model._corrupt(seq, valid)
        assert torch.equal(noisy[:, ~valid], seq[:, ~valid])  # special (pattern) tokens untouched
        assert (noisy[:, valid] != seq[:, valid]).float().mean() > 0.9  # p = 1: (almost) every real code replaced
        cond, mask = model.fuser(model.encode_video(frames))
        torch.testing.assert_close(out.logits, model.lm(noisy, cond, mask))  # the LM saw the noisy history
        model.input_noise = 0.25
        rate = (model._corrupt(seq, valid)[:, valid] != seq[:, valid]).float().mean()
        assert abs(float(rate) - 0.25 * (1 - 1 / model.card)) < 0.05
        model.eval()
        assert torch.equal(model._corrupt(seq, valid), seq)
    finally:
        model.input_noise = 0.0


def test_guide_tags_keeps_the_video_in_the_cfg_branch(setup, monkeypatch):
    _, _, model, frames, _ = setup
    model.eval()
    fuser = type(model.fuser)(model.encoder.out_dim, model.lm.dim, tag_dim=6)
    monkeypatch.setattr(model, "fuser", fuser)
    seen = {}
    monkeypatch.setattr(model.lm, "generate", lambda cond, cond_mask, uncond, uncond_mask, **kw: seen.update(
        cond=cond, uncond=uncond, uncond_mask=uncond_mask, extra=kw.get("extra"), cfg=kw.get("cfg")))
    tags, mask = torch.randn(3, 2, 6), torch.ones(3, 2, dtype=torch.bool)
    vt = model.encode_video(frames)
    yes = torch.ones(3, dtype=torch.bool)
    model.generate(frames, 5, tag_emb=tags, tag_mask=mask, guide="tags")
    want, want_mask = fuser(vt, tags, mask, drop_tags=yes)  # the picture, no tags
    torch.testing.assert_close(seen["uncond"], want)
    assert torch.equal(seen["uncond_mask"], want_mask)
    model.generate(frames, 5, tag_emb=tags, tag_mask=mask, guide="all")
    want, _ = fuser(vt, tags, mask, drop_video=yes, drop_tags=yes)  # SPEC: nothing
    torch.testing.assert_close(seen["uncond"], want)
    neg = torch.randn(3, 1, 6)
    model.generate(frames, 5, neg_emb=neg, guide="tags")
    torch.testing.assert_close(seen["uncond"], fuser(vt, neg)[0])  # the picture + the negative tags
    model.generate(frames, 5, neg_emb=neg, guide="all")
    torch.testing.assert_close(seen["uncond"], fuser(vt, neg, drop_video=yes)[0])
    model.generate(frames, 5, tag_emb=tags, tag_mask=mask, guide="both")  # null branch + picture-without-tags
    torch.testing.assert_close(seen["uncond"], fuser(vt, tags, mask, drop_video=yes, drop_tags=yes)[0])
    (extra_cond, _, _, w), = seen["extra"]
    torch.testing.assert_close(extra_cond, fuser(vt, tags, mask, drop_tags=yes)[0])
    assert w == 2.0 and seen["cfg"] == 3.0  # cfg - 1 with the default cfg 3
    model.generate(frames, 5, tag_emb=tags, tag_mask=mask, guide="both", tag_cfg=6.0)
    assert seen["extra"][0][3] == 5.0 and seen["cfg"] == 3.0  # only the tags branch gets the larger scale
    model.generate(frames, 5, tag_emb=tags, tag_mask=mask, guide="tags", tag_cfg=6.0)
    assert seen["cfg"] == 6.0
    with pytest.raises(ValueError, match="guide"):
        model.generate(frames, 5, guide="video")


def test_random_codec_is_the_same_on_every_build_path():
    """An untrained codec defines the tokens in the shards, so the solver (any train.seed), the shard writer, the
    export / debug model (load_pretrained) must all build the same one; and building it leaves the caller's random
    stream where a plain Codec() build leaves it, so models built after it keep their weights (issue 16)."""
    import functools

    from vmas.builders import codec_kwargs
    from vmas.data.shards import codec_encoder
    from vmas.models.codec import Codec

    cfg = load_config(CONFIGS / "debug.yaml")
    torch.manual_seed(5)  # the solver: seed_everything(train.seed), then build_codec
    solver = build_codec(cfg.model.codec)
    torch.manual_seed(0)
    pipe = load_pretrained(None, config=cfg)  # the debug model, and tools/train.py --export, use build_codec too
    ref = solver.state_dict()
    other = pipe.codec.state_dict()
    assert ref.keys() == other.keys() and all(torch.equal(ref[k], other[k]) for k in ref)
    wav = torch.randn(2, 1, 3200, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    encode = codec_encoder(functools.partial(build_codec, cfg.model.codec))  # the shard writer's codec
    assert torch.equal(encode(wav), solver.encode(wav))
    assert solver.encode(wav).unique().numel() > 4  # random but not degenerate: the comparison means something
    torch.manual_seed(3)
    Codec(**codec_kwargs(cfg.model.codec))
    after_plain = torch.rand(4)
    torch.manual_seed(3)
    build_codec(cfg.model.codec)
    assert torch.equal(torch.rand(4), after_plain)
