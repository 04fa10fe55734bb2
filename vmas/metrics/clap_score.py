"""CLAP score for the tag branch: cosine similarity between the CLAP audio embedding of the generated music and
the CLAP text embedding of its tags (one text per clip, tags joined with ", "), averaged over clips.

A clip longer than 10 s is cut into 10 s windows whose embeddings are averaged before the cosine (CLAP sees 10 s).
Backbone: ``transformers.ClapModel`` by hub name or local folder (LAION ``laion/clap-htsat-unfused`` by default;
``laion/larger_clap_music`` is the music-trained variant).
"""
from __future__ import annotations

import typing as tp

import numpy as np
import torch
import torch.nn.functional as F

from vmas.errors import VmasError
from vmas.metrics.embeddings import ClapAudioEmbedder, _clap_output, load_clap, module_device


class ClapScore:
    """Torchmetrics-style: ``update(wavs, sr, texts)``, ``compute()`` = mean cosine.

    Args:
        source (str): CLAP hub name or folder (ignored when ``model`` is given).
        model, feature_extractor, tokenizer: already loaded parts (tests, reuse).
    """

    def __init__(self, source: str = "laion/clap-htsat-unfused", model=None, feature_extractor=None, tokenizer=None):
        if model is None:
            model, feature_extractor, tokenizer = load_clap(source)
        if tokenizer is None:
            raise VmasError(f"CLAP '{source}' has no tokenizer files; save the tokenizer next to the model")
        self.audio = ClapAudioEmbedder(source, model=model, feature_extractor=feature_extractor)
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.reset()

    def reset(self) -> None:
        self.scores: tp.Dict[str, float] = {}

    @torch.no_grad()
    def text_embeddings(self, texts: tp.Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        device = module_device(self.model)
        tok = {k: v.to(device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return _clap_output(self.model.get_text_features(**tok)).float().cpu()  # [B, D] on the host, as the audio

    def audio_embedding(self, wav: np.ndarray, sr: int) -> torch.Tensor:
        return self.audio.embed_windows(self.audio.windows(wav, sr)).mean(0)  # [D]

    def update(self, wavs: tp.Sequence[np.ndarray], sr: int, texts: tp.Sequence[str],
               ids: tp.Optional[tp.Sequence[str]] = None) -> torch.Tensor:
        """Score ``len(wavs)`` clips against their texts; returns the per-clip cosines [B]."""
        if len(wavs) != len(texts):
            raise VmasError(f"CLAP score: {len(wavs)} clips but {len(texts)} texts")
        a = torch.stack([self.audio_embedding(w, sr) for w in wavs])  # [B, D]
        t = self.text_embeddings(texts)  # [B, D]
        cos = F.cosine_similarity(a, t, dim=-1)  # [B]
        ids = ids if ids is not None else [str(len(self.scores) + i) for i in range(len(wavs))]
        for key, c in zip(ids, cos.tolist()):
            self.scores[str(key)] = c
        return cos

    def compute(self) -> float:
        if not self.scores:
            raise VmasError("CLAP score: no clips were added (does the manifest have tags?)")
        return float(np.mean(list(self.scores.values())))

    def meta(self) -> tp.Dict[str, tp.Any]:
        return {"clips": len(self.scores), "backbone": f"clap:{self.source}"}
