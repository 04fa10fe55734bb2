"""MusicLM: causality, streaming == full pass, parity with transformers' MusicGen, weight loading, sampling, CFG."""
import collections
import sys
import types

import pytest
import torch
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from vmas.errors import CheckpointError
from vmas.models.lm import (
    GuidanceBranch,
    MusicLM,
    load_musicgen_lm_weights,
    musicgen_to_vmas_state_dict,
    sample_tokens,
)
from vmas.modules.transformer import additive_mask

DIM, LAYERS, HEADS, FFN, K, CARD = 32, 2, 4, 64, 4, 24



def get_debug_model(**kwargs) -> MusicLM:
    return MusicLM(**{**dict(dim=DIM, num_layers=LAYERS, num_heads=HEADS, ffn_dim=FFN, n_q=K, card=CARD), **kwargs})


def get_hf_model() -> MusicgenForCausalLM:
    cfg = MusicgenDecoderConfig(vocab_size=CARD, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                ffn_dim=FFN, num_codebooks=K, pad_token_id=CARD, bos_token_id=CARD,
                                decoder_start_token_id=CARD, max_position_embeddings=128)
    return MusicgenForCausalLM(cfg).eval()


def conditions(B=2, L=5):
    cond = torch.randn(B, L, DIM)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[-1, L // 2:] = False  # a padded sample
    return cond, mask


# ------------------------------------------------------------------------------------------------ forward pass
def test_causal_through_gradients():
    model = get_debug_model().eval()
    seq = torch.randint(0, CARD + 1, (1, K, 10))
    cond, mask = conditions(B=1)
    captured = {}
    embed = model.embed

    def leaf_embed(inputs, offset=0):
        captured["x"] = embed(inputs, offset).detach().requires_grad_(True)
        return captured["x"]

    model.embed = leaf_embed
    for s in (0, 4, 9):
        model(seq, cond, mask)[:, :, s].sum().backward()
        grad = captured["x"].grad.abs().sum(-1)[0]  # [S]: input position j carries seq column j - 1
        assert bool((grad[s + 1:] == 0).all()), f"logits at step {s} see the future"
        assert bool((grad[: s + 1] > 0).all()), f"logits at step {s} ignore part of the past"


def test_logits_at_s_do_not_depend_on_seq_at_s():
    model = get_debug_model().eval()
    seq = torch.randint(0, CARD, (2, K, 8))
    cond, mask = conditions()
    other = seq.clone()
    other[:, :, 5] = (other[:, :, 5] + 1) % CARD
    with torch.no_grad():
        a, b = model(seq, cond, mask), model(other, cond, mask)
    torch.testing.assert_close(a[:, :, :6], b[:, :, :6], rtol=0, atol=1e-6)
    assert (a[:, :, 6:] - b[:, :, 6:]).abs().max() > 1e-3


def test_streaming_equals_full_forward():
    model = get_debug_model().eval()
    seq = torch.randint(0, CARD + 1, (2, K, 12))
    cond, mask = conditions()
    with torch.no_grad():
        full = model(seq, cond, mask)
        inputs = model.shift_inputs(seq)
        chunks = []
        with model.streaming(cond, mask, max_steps=12) as state:
            for a, b in [(0, 1), (1, 4), (4, 5), (5, 12)]:  # single steps and multi-step chunks after a prefix
                chunks.append(model.forward_step(inputs[..., a:b], state))
    torch.testing.assert_close(torch.cat(chunks, dim=2), full, rtol=0, atol=1e-5)


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(1)
    plain = get_debug_model().train()
    ckpt = get_debug_model(grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    seq = torch.randint(0, CARD + 1, (2, K, 6))
    cond, mask = conditions()
    for m in (plain, ckpt):
        m(seq, cond, mask).logsumexp(-1).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


# -------------------------------------------------------------------------------------- transformers reference
def test_parity_with_transformers_musicgen():
    hf = get_hf_model()
    model = get_debug_model().eval()
    load_state, dropped = musicgen_to_vmas_state_dict(hf.state_dict())
    model.load_state_dict(load_state, strict=True)
    B, S = 2, 9
    seq = torch.randint(0, CARD + 1, (B, K, S))
    cond, mask = conditions(B)
    with torch.no_grad():
        ours = model(seq, cond, mask)
        inputs = model.shift_inputs(seq).reshape(B * K, S)  # transformers takes the shifted (BOS-first) sequence
        ref = hf(input_ids=inputs, encoder_hidden_states=cond, encoder_attention_mask=mask.long()).logits
    torch.testing.assert_close(ours, ref.reshape(B, K, S, CARD), rtol=0, atol=1e-4)


def test_greedy_cfg_generation_matches_transformers():
    """Both decoders, same weights, greedy with CFG 3: identical codes (also checks transformers' cache use)."""
    hf = get_hf_model()
    model = get_debug_model().eval()
    load_musicgen_lm_weights_from_state(model, hf.state_dict())
    B, T = 1, 6
    cond, uncond = torch.randn(B, 5, DIM), torch.randn(B, 5, DIM)
    ours = model.generate(cond, None, uncond, None, num_frames=T, cfg=3.0, temperature=0.0)
    bos = torch.full((B * K, 1), CARD)
    out = hf.generate(bos, attention_mask=torch.ones(B, 1, dtype=torch.long),  # its own mask has B*K rows: wrong
                      encoder_hidden_states=torch.cat([cond, uncond]), do_sample=False, guidance_scale=3.0,
                      max_length=T + K, num_return_sequences=1,
                      past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()))
    assert torch.equal(ours, out.reshape(B, K, T))


def load_musicgen_lm_weights_from_state(model, state):
    mapped, _ = musicgen_to_vmas_state_dict(state)
    model.load_state_dict(mapped, strict=True)


# ------------------------------------------------------------------------------------------------------ loading
def _assert_same_logits(a: MusicLM, b: MusicLM):
    seq = torch.randint(0, CARD + 1, (2, K, 7))
    cond, mask = conditions()
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(seq, cond, mask), b.eval()(seq, cond, mask), rtol=0, atol=1e-6)


def test_load_audiocraft_state_dict_bin(tmp_path, monkeypatch):
    """audiocraft's package: {best_state, xp.cfg (an omegaconf object we cannot import), ...} + text projection."""
    source = get_debug_model()
    state = dict(source.state_dict())
    state["condition_provider.conditioners.description.output_proj.weight"] = torch.randn(DIM, 16)
    state["condition_provider.conditioners.description.output_proj.bias"] = torch.randn(DIM)
    fake = types.ModuleType("omegaconf.dictconfig")

    class DictConfig:  # pickled by reference to omegaconf, which is not installed when loading
        pass

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    fake.DictConfig = DictConfig
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", fake)
    cfg = DictConfig()
    cfg.content = {"transformer_lm": {"dim": DIM}, "flags": collections.defaultdict(dict, {"a": {"b": 1}})}
    torch.save({"best_state": state, "xp.cfg": cfg, "version": "1.0", "exported": True}, tmp_path / "state_dict.bin")
    monkeypatch.delitem(sys.modules, "omegaconf.dictconfig")
    monkeypatch.delitem(sys.modules, "omegaconf")

    target = get_debug_model()
    dropped = load_musicgen_lm_weights(target, tmp_path)  # the folder; the file path works the same
    assert sorted(dropped) == ["condition_provider.conditioners.description.output_proj.bias",
                               "condition_provider.conditioners.description.output_proj.weight"]
    _assert_same_logits(source, target)


def test_load_audiocraft_mha_layout(tmp_path):
    """audiocraft without custom attention stores self_attn.mha.in_proj_weight / mha.out_proj."""
    source = get_debug_model()
    state = {k.replace("self_attn.", "self_attn.mha."): v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "lm.th")
    target = get_debug_model()
    load_musicgen_lm_weights(target, str(tmp_path / "lm.th"))
    _assert_same_logits(source, target)


@pytest.mark.parametrize("safe", [True, False])
def test_load_transformers_folder(tmp_path, safe):
    hf = get_hf_model()
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    model = get_debug_model()
    load_musicgen_lm_weights(model, tmp_path)
    reference = get_debug_model()
    load_musicgen_lm_weights_from_state(reference, hf.state_dict())
    _assert_same_logits(model, reference)
    assert torch.equal(model.transformer.layers[1].cross_attention.in_proj_weight[DIM:2 * DIM],
                       hf.model.decoder.layers[1].encoder_attn.k_proj.weight)


def test_load_transformers_conditional_generation_keys(tmp_path):
    """MusicgenForConditionalGeneration nests the decoder under `decoder.` and adds text/audio parts: dropped."""
    hf = get_hf_model()
    state = {f"decoder.{k}": v for k, v in hf.state_dict().items()}
    state.update({"enc_to_dec_proj.weight": torch.randn(DIM, 8), "text_encoder.shared.weight": torch.randn(3, 8)})
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = get_debug_model()
    assert sorted(load_musicgen_lm_weights(model, tmp_path)) == ["enc_to_dec_proj.weight", "text_encoder.shared.weight"]
    reference = get_debug_model()
    load_musicgen_lm_weights_from_state(reference, hf.state_dict())
    _assert_same_logits(model, reference)


def test_load_errors_are_one_line(tmp_path):
    torch.save(get_debug_model(dim=16).state_dict(), tmp_path / "state_dict.bin")
    with pytest.raises(CheckpointError, match="model.lm"):
        load_musicgen_lm_weights(get_debug_model(), tmp_path)
    with pytest.raises(CheckpointError, match="no MusicGen weights inside"):
        load_musicgen_lm_weights(get_debug_model(), tmp_path / "..")
    torch.save(get_debug_model(num_layers=1).state_dict(), tmp_path / "state_dict.bin")
    with pytest.raises(CheckpointError, match="missing"):
        load_musicgen_lm_weights(get_debug_model(), tmp_path / "state_dict.bin")


# ----------------------------------------------------------------------------------------------------- sampling
def _frequencies(logits, n=20000, **kwargs):
    gen = torch.Generator().manual_seed(0)
    tokens = sample_tokens(logits.expand(n, -1), generator=gen, **kwargs)  # [n]
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / n


def test_top_k_samples_renormalised_top_tokens():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    freq = _frequencies(probs.log(), top_k=2)
    expected = torch.tensor([0, 0.4, 0, 0.3, 0]) / 0.7  # only tokens 1 and 3, renormalised
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.015)


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    # sorted 0.5, 0.3, 0.15, 0.05: mass before each = 0, 0.5, 0.8, 0.95 -> top_p 0.7 keeps {0.5, 0.3}
    freq = _frequencies(probs.log(), top_p=0.7, top_k=1)  # top_k is ignored when top_p is set
    torch.testing.assert_close(freq, torch.tensor([0, 0.625, 0, 0.375]), rtol=0, atol=0.015)


def test_temperature_and_full_sampling():
    probs = torch.tensor([0.2, 0.8])
    freq = _frequencies(probs.log(), top_k=0, temperature=0.5)  # p^2 renormalised: 0.04 / 0.68, 0.64 / 0.68
    torch.testing.assert_close(freq, torch.tensor([0.04, 0.64]) / 0.68, rtol=0, atol=0.015)
    assert sample_tokens(torch.tensor([[0.1, 3.0, 2.0]]), temperature=0.0).tolist() == [1]


# --------------------------------------------------------------------------------------------------- generation
def test_seed_reproducible_and_batch_shape():
    model = get_debug_model().eval()
    cond, mask = conditions(B=2)
    null = torch.zeros(2, 1, DIM)

    def run(seed):
        return model.generate(cond, mask, null, None, num_frames=7, top_k=5,
                              generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (2, K, 7) and a.dtype == torch.long and int(a.max()) < CARD
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cached_equals_recompute():
    model = get_debug_model().eval()
    cond, mask = conditions()
    uncond = torch.randn(2, 3, DIM)
    out = [model.generate(cond, mask, uncond, None, num_frames=6, top_k=8, use_cache=cache,
                          generator=torch.Generator().manual_seed(3)) for cache in (True, False)]
    assert torch.equal(out[0], out[1])


def test_continuation_equals_one_go():
    model = get_debug_model().eval()
    cond, mask = conditions()
    uncond = torch.randn(2, 2, DIM)
    full = model.generate(cond, mask, uncond, None, num_frames=9, top_p=0.9,
                          generator=torch.Generator().manual_seed(5))
    cont = model.generate(cond, mask, uncond, None, num_frames=9, top_p=0.9, prompt=full[..., :4],
                          generator=torch.Generator().manual_seed(5))
    assert torch.equal(cont, full)
    other = full[..., :4].clone()
    other[0, 0, 0] = (other[0, 0, 0] + 1) % CARD
    kept = model.generate(cond, mask, uncond, None, num_frames=9, prompt=other, generator=torch.Generator())
    assert torch.equal(kept[..., :4], other)  # the prompt is kept verbatim


def test_cfg_with_different_condition_lengths_matches_reference_loop():
    """Greedy CFG decoding against a plain loop of full forward passes with unpadded cond / uncond."""
    model = get_debug_model().eval()
    cond, mask = conditions(B=2, L=6)
    uncond, uncond_mask = torch.randn(2, 3, DIM), torch.tensor([[True, True, False], [True, True, True]])
    cfg, T = 2.5, 5
    got = model.generate(cond, mask, uncond, uncond_mask, num_frames=T, cfg=cfg, temperature=0.0)

    S = T + K - 1
    seq = torch.full((2, K, S), CARD)
    with torch.no_grad():
        for s in range(S):
            c = model(seq[..., : s + 1], cond, mask)[:, :, -1]
            u = model(seq[..., : s + 1], uncond, uncond_mask)[:, :, -1]
            token = (u + cfg * (c - u)).argmax(-1)  # [B, K]
            for k in range(K):
                if 0 <= s - k < T:
                    seq[:, k, s] = token[:, k]
    assert torch.equal(got, model.pattern.revert(seq))


# ---------------------------------------------------------------------------------- per-step (added) condition
def test_step_condition_is_added_to_the_inputs_and_streams():
    model = get_debug_model().eval()
    seq = torch.randint(0, CARD + 1, (2, K, 12))
    cond, mask = conditions()
    step = torch.randn(2, 12, DIM)
    with torch.no_grad():
        full = model(seq, cond, mask, step)
        # by hand: the same transformer on embed(inputs) + step
        x = model.embed(model.shift_inputs(seq)) + step
        ref = model.transformer(x, model.transformer.cross_kv(cond), additive_mask(mask, x.dtype))
        ref = torch.stack([h(model.out_norm(ref)) for h in model.linears], dim=1)
        chunks = []
        with model.streaming(cond, mask, max_steps=12, step_cond=step) as state:
            inputs = model.shift_inputs(seq)
            for a, b in [(0, 1), (1, 4), (4, 5), (5, 12)]:
                chunks.append(model.forward_step(inputs[..., a:b], state))
    torch.testing.assert_close(full, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat(chunks, dim=2), full, rtol=0, atol=1e-5)
    assert (full - model(seq, cond, mask)).abs().max() > 1e-3  # it does change the logits


def test_step_condition_generation_matches_reference_loop():
    """Greedy CFG with a per-step condition on the conditional branch and zeros on the unconditional one."""
    model = get_debug_model().eval()
    cond, mask = conditions(B=2, L=4)
    uncond = torch.randn(2, 3, DIM)
    T = 5
    S = T + K - 1
    step = torch.randn(2, S, DIM)
    got = [model.generate(cond, mask, uncond, None, num_frames=T, cfg=2.0, temperature=0.0, step_cond=step,
                          use_cache=c) for c in (True, False)]
    seq = torch.full((2, K, S), CARD)
    with torch.no_grad():
        for s in range(S):
            c = model(seq[..., : s + 1], cond, mask, step)[:, :, -1]
            u = model(seq[..., : s + 1], uncond, None)[:, :, -1]
            token = (u + 2.0 * (c - u)).argmax(-1)
            for k in range(K):
                if 0 <= s - k < T:
                    seq[:, k, s] = token[:, k]
    assert torch.equal(got[0], model.pattern.revert(seq)) and torch.equal(got[1], got[0])


def test_two_condition_guidance_matches_reference_loop():
    """logits = c + (cfg-1)(c - u) + w (c - u2): greedy decoding against full forward passes per branch."""
    model = get_debug_model().eval()
    cond, mask = conditions(B=2, L=4)
    uncond, u2 = torch.randn(2, 2, DIM), torch.randn(2, 5, DIM)
    T, cfg, w = 5, 3.0, 1.5
    S = T + K - 1
    step2 = torch.randn(2, S, DIM)
    got = [model.generate(cond, mask, uncond, None, num_frames=T, cfg=cfg, temperature=0.0, use_cache=c,
                          extra=[(u2, None, step2, w)]) for c in (True, False)]
    seq = torch.full((2, K, S), CARD)
    with torch.no_grad():
        for s in range(S):
            c = model(seq[..., : s + 1], cond, mask)[:, :, -1]
            u = model(seq[..., : s + 1], uncond, None)[:, :, -1]
            v = model(seq[..., : s + 1], u2, None, step2)[:, :, -1]
            token = (c + (cfg - 1) * (c - u) + w * (c - v)).argmax(-1)
            for k in range(K):
                if 0 <= s - k < T:
                    seq[:, k, s] = token[:, k]
    assert torch.equal(got[0], model.pattern.revert(seq)) and torch.equal(got[1], got[0])


def test_typed_guidance_branch_is_the_old_tuple():
    """GuidanceBranch unpacks like the (cond, mask, step_cond, weight) tuples callers passed before; both give the
    same codes."""
    model = get_debug_model().eval()
    cond, mask = conditions(B=2, L=4)
    uncond, u2 = torch.randn(2, 2, DIM), torch.randn(2, 5, DIM)
    branch = GuidanceBranch(u2, None, None, 1.5)
    assert tuple(branch) == (u2, None, None, 1.5) and branch.weight == 1.5
    typed, plain = [model.generate(cond, mask, uncond, None, num_frames=5, top_k=4, extra=[e],
                                   generator=torch.Generator().manual_seed(2)) for e in (branch, tuple(branch))]
    assert torch.equal(typed, plain)


def test_bench_generate_tool_runs_at_debug_size(tmp_path):
    """tools/bench_generate.py --json (the README's speed numbers) at toy size, as a user runs it: the LM is built
    through vmas.builders (its own skip list once fell behind LMConfig), and its correctness checks hold."""
    import json
    import os
    import subprocess
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_generate.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(tool), "--json", "--dim", "32", "--layers", "1", "--heads", "2",
                           "--ffn", "64", "--card", "32", "--frames", "12", "--cond-len", "5", "--top-k", "8",
                           "--repeat", "1", "--decoders", "cached,static"],  # static-compiled: test_static_decode
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["greedy_matches_hf"] and result["hf_output_ok"] and result["recompute_same_codes"]
    assert result["setup"]["steps"] == 12 + 4 - 1  # frames + n_q - 1 pattern steps
    # MusicGen-medium (paper preset), ours and transformers' decoder: the same parameter count
    assert result["params_paper_lm"] == result["params_paper_lm_hf"] > 1.8e9
    assert result["ours_cached_tok_s"] > 0 and result["cached_over_recompute"] > 0
    assert result["static_same_codes"] and result["ours_static_tok_s"] > 0 and result["static_over_hf"] > 0
    assert result["best_decoder"] in ("cached", "static") and len(result["meta"]["load_start"]) == 3
