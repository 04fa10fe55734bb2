"""Auto-tagging stages: prompt plumbing with stubs, a tiny real causal LM saved locally, clear offline errors."""
import pytest
import torch

from vmas.errors import CheckpointError
from vmas.tags.autotag import COMPOSER_PROMPT, AutoTagger, HFCausalLM, build_auto_tagger, caption_to_tags


def test_pipeline_passes_description_to_composer_prompt_and_cleans():
    seen = {}

    def captioner(frames):
        seen["frames"] = frames.shape
        return "a sunset over the sea"

    def llm(prompt):
        seen["prompt"] = prompt
        return "1. Piano, PIANO, low quality, Strings, 70bpm\n\nSure! Anything else?"

    tagger = AutoTagger(captioner, llm)
    tags = tagger(torch.zeros(4, 8, 8, 3, dtype=torch.uint8))
    assert seen["frames"] == (4, 8, 8, 3)
    assert seen["prompt"] == COMPOSER_PROMPT.format(description="a sunset over the sea")
    assert tags == ["piano", "strings", "70 BPM"]  # deduped, meta word dropped, tempo normalised, chatter cut


def test_caption_to_tags_uses_the_same_cleaner():
    assert caption_to_tags("calm piano piece", lambda p: "Tags: Piano; calm; calm") == ["piano", "calm"]


def test_tiny_local_causal_lm(tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from vmas.tags.text_encoder import minilm_default_path

    tok = AutoTokenizer.from_pretrained(str(minilm_default_path()))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=256,
                                           bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    llm = HFCausalLM(str(tmp_path), max_new_tokens=5)
    out = llm("piano")
    # greedy decoding of the same model by hand
    ids = tok("piano", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out == tok.decode(ids[0, -5:], skip_special_tokens=True)


def test_missing_models_fail_with_one_line():
    with pytest.raises(CheckpointError, match="needs a captioner"):
        build_auto_tagger("", "x")
    with pytest.raises(CheckpointError, match="captioner '/nope' is not available offline"):
        build_auto_tagger("/nope", "/nope2")
