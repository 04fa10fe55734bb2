"""Tag text encoders: the offline MiniLM default (real weights) and CLAP through a tiny local ClapModel."""
import pytest
import torch

from vmas.errors import CheckpointError
from vmas.tags.text_encoder import ClapTextEncoder, load_text_encoder, minilm_default_path


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm")


def test_minilm_matches_manual_mean_pooling(minilm):
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_default_path())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        batch = tok(["piano"], return_tensors="pt")
        h = model(**batch).last_hidden_state[0]  # [L, 384] (no padding for one string)
        expected = torch.nn.functional.normalize(h.mean(0), dim=0)
    torch.testing.assert_close(minilm.embed_strings(["piano"])[0], expected, atol=1e-5, rtol=1e-4)


def test_minilm_is_a_real_pretrained_encoder(minilm):
    e = minilm.embed_strings(["piano", "grand piano", "heavy metal drums"])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    # semantics: related tags are closer than unrelated ones (fails with random weights)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_batch_padding_and_cache(minilm):
    emb, mask = minilm([["piano", "jazz"], [], ["piano"]])
    assert emb.shape == (3, 2, 384)
    assert mask.tolist() == [[True, True], [False, False], [True, False]]
    torch.testing.assert_close(emb[0, 0], emb[2, 0])
    assert emb[1].abs().sum() == 0
    assert "jazz" in minilm._cache


def test_clap_from_tiny_local_checkpoint(tiny_clap):
    from transformers import AutoTokenizer, ClapModel

    enc = load_text_encoder(f"clap:{tiny_clap}")
    assert isinstance(enc, ClapTextEncoder) and enc.dim == 16
    got = enc.embed_strings(["piano", "jazz"])
    model = ClapModel.from_pretrained(str(tiny_clap)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_clap))(["piano", "jazz"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_text_features(**tok)
        ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(got, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=1e-4)


def test_missing_clap_name_is_one_clear_line():
    with pytest.raises(CheckpointError, match="not available offline.*huggingface-cli download"):
        load_text_encoder("clap:/nonexistent/clap-folder")
    with pytest.raises(CheckpointError, match="unknown text encoder"):
        load_text_encoder("word2vec")
