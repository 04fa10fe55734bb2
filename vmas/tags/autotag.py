"""Automatic tags (SONIQUE, SPEC §7): video -> description -> LLM composer prompt -> tags -> cleaner.

Stages are plain callables so each can be swapped or tested alone:

- captioner: ``frames uint8 [T,H,W,3] -> str``. Default: a transformers image-to-text model (e.g. BLIP) run on a
  few keyframes, descriptions joined. A video-language model can be plugged in the same way.
- llm: ``prompt str -> str``. Default: a transformers causal LM by name (SONIQUE uses Mistral-7B-Instruct), greedy.
- cleaner: :func:`vmas.tags.cleaner.clean_tags`.

Training-time tags for music captions use :func:`caption_to_tags` (same LLM and cleaner, a captioning prompt).
"""
from __future__ import annotations

import typing as tp

import torch

from vmas.errors import CheckpointError
from vmas.tags.cleaner import clean_tags

COMPOSER_PROMPT = (
    "You compose background music for this video. Video description: {description}\n"
    "Answer with one line of tags covering instruments, genres, mood and tempo, e.g. "
    "Piano, Synths, Strings, Reflective, Slow tempo, 96 BPM\nTags:"
)
CAPTION_PROMPT = (
    "Turn this description of a piece of music into one line of tags covering instruments, genres, mood and "
    "tempo, e.g. Piano, Synths, Strings, Reflective, Slow tempo, 96 BPM\nDescription: {description}\nTags:"
)


class HFCausalLM:
    """Greedy completion with a transformers causal LM (chat template when the tokenizer has one)."""

    def __init__(self, name_or_path: str, device: tp.Union[str, torch.device] = "cpu", max_new_tokens: int = 48):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from vmas.loading import hf_pretrained

        fix = _fix("llm", name_or_path)
        self.tokenizer = hf_pretrained(AutoTokenizer, name_or_path, "llm", fix)
        self.model = hf_pretrained(AutoModelForCausalLM, name_or_path, "llm", fix).to(device).eval()
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, prompt: str) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt")
            ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        else:
            ids = tok(prompt, return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                  do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id or 0)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


class HFImageCaptioner:
    """Caption ``num_keyframes`` evenly spaced frames with a transformers image-to-text model and join them."""

    def __init__(self, name_or_path: str, device: tp.Union[str, torch.device] = "cpu", num_keyframes: int = 3):
        from transformers import pipeline

        # transformers 5 replaced the "image-to-text" task by "image-text-to-text", which needs a text prompt: an
        # empty one is plain captioning (BLIP's generate drops the [SEP] of an empty prompt)
        self.pipe = pipeline("image-text-to-text", model=name_or_path, device=torch.device(device))
        self.num_keyframes = num_keyframes

    def __call__(self, frames: torch.Tensor) -> str:
        from PIL import Image

        idx = torch.linspace(0, frames.shape[0] - 1, self.num_keyframes).round().long().unique()
        texts = []
        for i in idx.tolist():
            out = self.pipe(images=Image.fromarray(frames[i].cpu().numpy()), text="")
            texts.append(out[0]["generated_text"].strip())
        return "; ".join(dict.fromkeys(t for t in texts if t))


class AutoTagger:
    """frames -> cleaned tags through ``captioner`` and ``llm``."""

    def __init__(self, captioner: tp.Callable[[torch.Tensor], str], llm: tp.Callable[[str], str], max_tags: int = 16):
        self.captioner, self.llm, self.max_tags = captioner, llm, max_tags

    def describe(self, frames: torch.Tensor) -> str:
        return self.captioner(frames)

    def __call__(self, frames: torch.Tensor) -> tp.List[str]:
        answer = self.llm(COMPOSER_PROMPT.format(description=self.describe(frames)))
        return clean_tags(answer.split("\n\n")[0], max_tags=self.max_tags)


def caption_to_tags(caption: str, llm: tp.Callable[[str], str], max_tags: int = 16) -> tp.List[str]:
    """Training-time tags from a music caption (same LLM + cleaner path as inference)."""
    return clean_tags(llm(CAPTION_PROMPT.format(description=caption)).split("\n\n")[0], max_tags=max_tags)


def _fix(kind: str, name: str) -> str:
    """The end of every 'not available' line: where to get the model and which setting names it."""
    hub = name if "/" in name and not name.startswith(("/", ".", "~")) else "ORG/NAME"
    return (f"download it with `huggingface-cli download {hub} --local-dir DIR` and set model.tags.{kind} to DIR "
            "(or to a hub name in the local cache)")


def _load(kind: str, name: str, factory: tp.Callable):
    """Build a captioner/LLM. :func:`vmas.loading.resolve_pretrained` answers first, so a missing folder or an
    uncached name on a machine without the hub fails at once (the transformers ``pipeline`` behind the captioner
    would retry the hub for tens of seconds); a model that still does not load raises OSError/ValueError, turned
    into the same one-line error :func:`vmas.loading.hf_pretrained` gives, with the reason whole."""
    from vmas.loading import error_reason, resolve_pretrained

    if not name:
        raise CheckpointError(f"--auto-tags needs a {kind}: set model.tags.{kind} to a transformers name or path")
    resolve_pretrained(name, kind, _fix(kind, name))
    try:
        return factory()
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{kind} '{name}' is not available offline ({error_reason(err)}): "
                              f"{_fix(kind, name)}") from None


def build_auto_tagger(captioner: str, llm: str, device: tp.Union[str, torch.device] = "cpu",
                      max_tags: int = 16) -> AutoTagger:
    cap = _load("captioner", captioner, lambda: HFImageCaptioner(captioner, device))
    lm = _load("llm", llm, lambda: HFCausalLM(llm, device))
    return AutoTagger(cap, lm, max_tags=max_tags)
