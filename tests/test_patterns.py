"""Delay pattern: exact MusicGen layout (hand table + transformers' reference), round trips, valid mask."""
import pytest
import torch

from vmas.modules.patterns import DelayPattern


def test_layout_matches_hand_table():
    # K = 3, T = 2: codebook k at step s holds frame s - k; 9 is the special token.
    codes = torch.tensor([[[10, 11], [20, 21], [30, 31]]])  # [1, 3, 2]
    seq, valid = DelayPattern(3).build(codes, special=9)
    assert seq.tolist() == [[[10, 11, 9, 9], [9, 20, 21, 9], [9, 9, 30, 31]]]
    assert valid.tolist() == [[True, True, False, False], [False, True, True, False], [False, False, True, True]]


@pytest.mark.parametrize("n_q", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("T", [0, 1, 2, 5, 17])
def test_revert_inverts_build(n_q, T):
    pattern = DelayPattern(n_q)
    codes = torch.randint(0, 50, (3, n_q, T))
    seq, valid = pattern.build(codes, special=50)
    assert seq.shape == (3, n_q, T + n_q - 1) and valid.shape == (n_q, T + n_q - 1)
    assert torch.equal(pattern.revert(seq), codes)
    # every code appears exactly once at a valid position, the special token fills the rest
    assert int(valid.sum()) == n_q * T
    assert bool((seq[:, ~valid] == 50).all()) and bool((seq[:, valid] != 50).all())
    for k in range(n_q):
        for s in range(T + n_q - 1):
            if valid[k, s]:
                assert torch.equal(seq[:, k, s], codes[:, k, s - k])


def test_revert_works_on_logits():
    pattern = DelayPattern(4)
    codes = torch.randint(0, 8, (2, 4, 6))
    seq, _ = pattern.build(codes, special=8)
    logits = torch.nn.functional.one_hot(seq, 9).float()  # [B, K, S, 9]
    assert torch.equal(pattern.revert(logits).argmax(-1), codes)


def test_matches_transformers_delay_pattern():
    """transformers' MusicgenForCausalLM.build_delay_pattern_mask, minus its BOS column, is our sequence."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    K, T, card = 4, 7, 16
    hf = MusicgenForCausalLM(MusicgenDecoderConfig(vocab_size=card, hidden_size=8, num_hidden_layers=1,
                                                   num_attention_heads=2, ffn_dim=8, num_codebooks=K))
    codes = torch.randint(0, card, (2, K, T))
    with_bos = torch.cat([torch.full((2, K, 1), card), codes], dim=-1).reshape(2 * K, T + 1)
    _, hf_mask = hf.build_delay_pattern_mask(with_bos, pad_token_id=card, max_length=T + K)
    seq, _ = DelayPattern(K).build(codes, special=card)
    assert torch.equal(hf_mask.reshape(2, K, T + K)[..., 1:], seq)
