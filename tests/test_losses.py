"""Losses against direct computations: beat-weighted CE by explicit loops, InfoNCE by its formula, gradchecks,
and the distributed gather against a single-process run of the same global batch."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from vmas.alignment import beat_weights
from vmas.losses import (
    ContrastiveLoss,
    VMASObjective,
    beat_weighted_ce,
    frame_weights_to_pattern,
    info_nce,
    music_feature,
    music_feature_from_codes,
)
from vmas.modules.patterns import DelayPattern

B, K, T, CARD = 2, 3, 5, 7
S = T + K - 1



def pattern_batch(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, CARD, (B, K, T), generator=g)
    seq, valid = DelayPattern(K).build(codes, special=CARD)  # [B, K, S], [K, S]
    logits = torch.randn(B, K, S, CARD, generator=g, dtype=torch.float64).to(dtype)
    return codes, seq, valid, logits


# --------------------------------------------------------------------------------------------------- beat-weighted CE
def test_frame_weights_follow_the_delay():
    w = torch.tensor([[1.0, 2.0, 3.0]])  # [B=1, T=3]
    assert frame_weights_to_pattern(w, n_q=2, num_steps=4).tolist() == [[[1, 2, 3, 0], [0, 1, 2, 3]]]


def test_beat_weighted_ce_equals_explicit_loop():
    codes, seq, valid, logits = pattern_batch(torch.float64)
    weights = torch.rand(B, T, dtype=torch.float64) + 0.25  # [B, T]
    loss, per_k = beat_weighted_ce(logits, seq, valid, weights, special_token=CARD)
    num, den = [0.0] * K, [0.0] * K
    for b in range(B):
        for k in range(K):
            for s in range(S):
                t = s - k  # codebook k at step s predicts frame s - k
                if 0 <= t < T:
                    ce = -torch.log_softmax(logits[b, k, s], -1)[codes[b, k, t]].item()
                    num[k] += weights[b, t].item() * ce
                    den[k] += weights[b, t].item()
    assert loss.item() == pytest.approx(sum(num) / sum(den), rel=1e-12)
    assert per_k.tolist() == pytest.approx([n / d for n, d in zip(num, den)], rel=1e-12)


def test_lambda_one_is_plain_cross_entropy():
    codes, seq, valid, logits = pattern_batch(torch.float32)
    bm = torch.rand(B, T) < 0.5
    bv = torch.rand(B, T) < 0.5
    weights = torch.stack([beat_weights(bm[b], bv[b], delta=1, lam=1.0) for b in range(B)])  # all ones
    loss, _ = beat_weighted_ce(logits, seq, valid, weights)
    mask = valid[None].expand(B, K, S)
    plain = F.cross_entropy(logits[mask], seq[mask])  # mean CE over every valid (codebook, step)
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=0)
    unweighted, _ = beat_weighted_ce(logits, seq, valid, None)
    torch.testing.assert_close(unweighted, plain, rtol=1e-6, atol=0)
    # lambda < 1 with some beats really changes the loss
    weighted, _ = beat_weighted_ce(logits, seq, valid, torch.stack([beat_weights(bm[b], bv[b], 1, 0.1)
                                                                    for b in range(B)]))
    assert abs(weighted.item() - plain.item()) > 1e-4


def test_special_and_invalid_positions_get_no_gradient():
    codes, seq, valid, logits = pattern_batch(torch.float32)
    seq = seq.clone()
    seq[0, 1, 2] = CARD  # a special token at a valid position is excluded as well
    logits.requires_grad_(True)
    loss, _ = beat_weighted_ce(logits, seq, valid, torch.ones(B, T))
    loss.backward()
    grad_norm = logits.grad.abs().sum(-1)  # [B, K, S]
    kept = valid[None].expand(B, K, S) & (seq != CARD)
    assert bool((grad_norm[~kept] == 0).all()) and bool((grad_norm[kept] > 0).all())


def test_bf16_logits_are_scored_in_float32():
    codes, seq, valid, logits = pattern_batch(torch.float32)
    w = torch.rand(B, T)
    ref, _ = beat_weighted_ce(logits.bfloat16().float(), seq, valid, w)
    out, _ = beat_weighted_ce(logits.bfloat16(), seq, valid, w)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def tiny_pattern(card=3):
    """B=2, K=2, T=2 (S=3), card 3: small enough for a full (not fast-mode) gradcheck."""
    codes = torch.randint(0, card, (2, 2, 2))
    seq, valid = DelayPattern(2).build(codes, special=card)
    return seq, valid, torch.randn(2, 2, 3, card, dtype=torch.float64, requires_grad=True)


def test_beat_weighted_ce_gradcheck():
    seq, valid, logits = tiny_pattern()
    w = torch.rand(2, 2, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(lambda x: beat_weighted_ce(x, seq, valid, w)[0], (logits,))


# --------------------------------------------------------------------------------------------------- contrastive
def direct_info_nce(v, m, scale):
    """Textbook symmetric InfoNCE with explicit sums (cosine similarity, temperature 1/scale)."""
    n = v.shape[0]
    cos = [[F.cosine_similarity(v[i], m[j], dim=0).item() for j in range(n)] for i in range(n)]
    v2m = -sum(scale * cos[i][i] - math.log(sum(math.exp(scale * cos[i][j]) for j in range(n))) for i in range(n)) / n
    m2v = -sum(scale * cos[j][j] - math.log(sum(math.exp(scale * cos[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (v2m + m2v)


def test_info_nce_equals_direct_formula():
    v, m = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    out = info_nce(F.normalize(v, dim=-1), F.normalize(m, dim=-1), torch.tensor(1 / 0.07, dtype=torch.float64))
    assert out.item() == pytest.approx(direct_info_nce(v, m, 1 / 0.07), rel=1e-10)


def test_contrastive_forward_equals_direct_computation():
    torch.manual_seed(0)
    codes, seq, valid, logits = pattern_batch(torch.float64)
    codebooks = torch.randn(K, CARD, 4, dtype=torch.float64)  # [K, card, D]
    video_tokens = torch.randn(B + 1, 6, 10, dtype=torch.float64)[:B]  # [B, Tv, C]
    loss_fn = ContrastiveLoss(video_dim=10, music_dim=4, proj_dim=3, temperature_init=0.07).double()
    loss = loss_fn(video_tokens, logits, valid, codebooks)
    # music feature by explicit loops over frames: m = mean_t sum_k softmax(logits at (k, t + k)) @ C_k
    m = torch.zeros(B, 4, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            for k in range(K):
                m[b] += torch.softmax(logits[b, k, t + k], -1) @ codebooks[k]
    m /= T
    torch.testing.assert_close(music_feature(logits, codebooks, valid), m)
    v = video_tokens.mean(1) @ loss_fn.video_head.weight.t()
    mm = m @ loss_fn.music_head.weight.t()
    assert loss.item() == pytest.approx(direct_info_nce(v, mm, loss_fn.logit_scale.item()), rel=1e-12)
    assert loss_fn.temperature == pytest.approx(0.07)


def test_music_feature_of_sharp_predictions_equals_codes_feature():
    codes, seq, valid, _ = pattern_batch()
    codebooks = torch.randn(K, CARD, 4)
    sharp = F.one_hot(seq.clamp(max=CARD - 1), CARD).float() * 60.0  # softmax ~ one-hot on the true code
    torch.testing.assert_close(music_feature(sharp, codebooks, valid), music_feature_from_codes(codes, codebooks),
                               rtol=1e-5, atol=1e-5)
    loss_fn = ContrastiveLoss(10, 4, 3)
    torch.testing.assert_close(loss_fn.embed_music(logits=sharp, valid=valid, codebooks=codebooks),
                               loss_fn.embed_music(codes=codes, codebooks=codebooks), rtol=1e-4, atol=1e-5)
    assert torch.allclose(loss_fn.embed_video(torch.randn(2, 6, 10)).norm(dim=-1), torch.ones(2))


def test_contrastive_gradcheck_and_no_gradient_into_codec():
    seq, valid, logits = tiny_pattern()
    codebooks = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)  # [K, card, D]
    video_tokens = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)  # [B, Tv, C]
    loss_fn = ContrastiveLoss(video_dim=3, music_dim=3, proj_dim=4).double()
    assert torch.autograd.gradcheck(lambda vt, lg: loss_fn(vt, lg, valid, codebooks), (video_tokens, logits))
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    m = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: info_nce(F.normalize(a, dim=-1), F.normalize(b, dim=-1), s),
                                    (v, m, scale))
    loss_fn(video_tokens, logits, valid, codebooks).backward()
    assert codebooks.grad is None and loss_fn.log_scale.grad is not None


def test_temperature_is_learnable_and_clamped():
    loss_fn = ContrastiveLoss(4, 4, 4, temperature_init=0.07, min_temperature=0.01)
    with torch.no_grad():
        loss_fn.log_scale.fill_(math.log(1000.0))
    assert loss_fn.logit_scale.item() == pytest.approx(100.0)
    loss_fn(torch.randn(3, 2, 4), torch.randn(3, 1, 2, 5), None, torch.randn(1, 5, 4)).backward()
    assert loss_fn.log_scale.grad.item() == 0.0  # at the cap, as in CLIP


def test_temperature_is_shape_1_and_old_0_dim_checkpoints_load():
    """The temperature is a [1] parameter (DeepSpeed broadcasts it as bytes); state dicts written when it was 0-dim
    load into it, also nested under a model prefix and through a strict load."""
    loss_fn = ContrastiveLoss(4, 4, 4, temperature_init=0.07)
    assert loss_fn.log_scale.shape == (1,)
    old = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    old["log_scale"] = torch.tensor(math.log(1 / 0.05))  # 0-dim, as saved before
    fresh = ContrastiveLoss(4, 4, 4, temperature_init=0.07)
    fresh.load_state_dict(old, strict=True)
    assert fresh.log_scale.shape == (1,) and fresh.temperature == pytest.approx(0.05)
    assert old["log_scale"].ndim == 0  # the caller's dict is left as it was
    outer = torch.nn.ModuleDict({"contrastive": ContrastiveLoss(4, 4, 4)})
    outer.load_state_dict({f"contrastive.{k}": v for k, v in old.items()})
    assert outer["contrastive"].log_scale.shape == (1,) and outer["contrastive"].temperature == pytest.approx(0.05)
    torch.testing.assert_close(outer["contrastive"].video_head.weight, loss_fn.video_head.weight)


def test_batch_of_one_is_zero_warns_once_and_touches_all_parameters(caplog):
    loss_fn = ContrastiveLoss(4, 4, 4)
    args = (torch.randn(1, 2, 4), torch.randn(1, 1, 2, 5), None, torch.randn(1, 5, 4))
    with caplog.at_level(logging.WARNING, logger="vmas.losses.contrastive"):
        first = loss_fn(*args)
        loss_fn(*args)
    assert first.item() == 0.0 and caplog.text.count("needs >= 2 clips") == 1
    first.backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in loss_fn.parameters())


# --------------------------------------------------------------------------------------------------- objective
def test_objective_is_ar_plus_alpha_contrastive_on_clips_that_kept_their_video():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(3)
    n = 3
    codes = torch.randint(0, CARD, (n, K, T), generator=g)
    seq, valid = DelayPattern(K).build(codes, special=CARD)  # [3, K, S], [K, S]
    logits = torch.randn(n, K, S, CARD, generator=g, dtype=torch.float64)
    tokens = torch.randn(n, 4, 6, generator=g, dtype=torch.float64)  # [B, Tv, C]
    codebooks = torch.randn(K, CARD, 5, generator=g, dtype=torch.float64)  # [K, card, D]
    kept = torch.tensor([True, False, True])  # clip 1 was CFG-dropped: its logits never saw its video
    out = SimpleNamespace(logits=logits, seq=seq, valid=valid, video_tokens=tokens, video_kept=kept)
    w = torch.rand(n, T, generator=g, dtype=torch.float64) + 0.5
    head = ContrastiveLoss(video_dim=6, music_dim=5, proj_dim=3, temperature_init=0.1).double()
    objective = VMASObjective(n_q=K, contrastive_weight=0.25)
    total, stats = objective(out, {"beat_weights": w}, head, codebooks)
    ar, per_k = beat_weighted_ce(logits, seq, valid, w)
    lc = head(tokens[[0, 2]], logits[[0, 2]], valid, codebooks)
    assert total.item() == pytest.approx(ar.item() + 0.25 * lc.item(), rel=1e-12)
    assert lc.item() != pytest.approx(head(tokens, logits, valid, codebooks).item(), rel=1e-6)
    assert objective.stat_names == ["loss", "ar", "ce_q1", "ce_q2", "ce_q3", "contrastive", "beat_w", "temp"]
    want = [total.item(), ar.item(), *per_k.tolist(), lc.item(), w.mean().item(), 0.1]
    assert stats.dtype == torch.float32 and stats.tolist() == pytest.approx(want, rel=1e-6)
    # without the head (or alpha 0) the objective is the AR term alone and reports no temperature
    total0, stats0 = VMASObjective(n_q=K, contrastive_weight=0.0)(out, {"beat_weights": w}, head, codebooks)
    assert total0.item() == pytest.approx(ar.item(), rel=1e-12) and stats0[-1].item() == 0.0


# --------------------------------------------------------------------------------------------------- distributed
SPLITS = {"even": [(0, 2), (2, 4)], "uneven": [(0, 3), (3, 4)]}


def _ddp_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for name, rows in SPLITS.items():
        loss_fn, video, logits, codebooks = _ddp_problem()
        lo, hi = rows[rank]
        vt = video[lo:hi].clone().requires_grad_(True)
        loss = loss_fn(vt, logits[lo:hi], None, codebooks)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in loss_fn.parameters()])
        dist.all_reduce(grads)
        grads /= world  # what data-parallel gradient averaging does
        total = loss.detach().clone()
        dist.all_reduce(total)
        results[name] = {"grads": grads, "video_grad": vt.grad, "mean_loss": total / world}
    torch.save(results, f"{result_file}.{rank}")
    dist.destroy_process_group()


def _ddp_problem():
    g = torch.Generator().manual_seed(3)
    loss_fn = ContrastiveLoss(video_dim=6, music_dim=4, proj_dim=5).double()
    with torch.no_grad():
        for p in loss_fn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)  # independent of the global RNG
    video = torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    logits = torch.randn(4, 2, 3, 5, generator=g, dtype=torch.float64)
    codebooks = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    return loss_fn, video, logits, codebooks


def test_distributed_gather_matches_single_process(tmp_path):
    """2 gloo ranks holding 2+2 and 3+1 clips: averaged gradients == one process on the 4-clip batch."""
    import torch.multiprocessing as mp

    loss_fn, video, logits, codebooks = _ddp_problem()
    video = video.clone().requires_grad_(True)
    loss = loss_fn(video, logits, None, codebooks)
    loss.backward()
    ref_grads = torch.cat([p.grad.flatten() for p in loss_fn.parameters()])
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f"out.{rank}")
        for name, rows in SPLITS.items():
            out, (lo, hi) = results[name], rows[rank]
            torch.testing.assert_close(out["mean_loss"], loss.detach(), msg=lambda m, n=name: f"{n}: {m}")
            torch.testing.assert_close(out["grads"], ref_grads, msg=lambda m, n=name: f"{n}: {m}")
            # input gradient on a rank = world size x the global loss's (undone by data-parallel averaging)
            torch.testing.assert_close(out["video_grad"] / 2, video.grad[lo:hi], msg=lambda m, n=name: f"{n}: {m}")
