"""Video -> music retrieval Recall@k (paper: N = 2000 test pairs, R@1 / R@10).

For each video i, the candidates are the N ground-truth tracks of the set; its rank is the number of *other*
tracks whose cosine similarity is >= that of track i (ties count against the query, so constant embeddings give
chance-level recall instead of a perfect score). Recall@k = fraction of queries with rank < k.
Embeddings come from the model's contrastive heads (``video`` and ``music`` in the shared space).
"""
from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F

from vmas.errors import VmasError
from vmas.utils import to_tensor


def retrieval_ranks(video: torch.Tensor, music: torch.Tensor) -> torch.Tensor:
    """video [N, D], music [N, D] (row i of each is a true pair) -> rank of the true track per query [N]."""
    v = F.normalize(to_tensor(video).double(), dim=-1)
    m = F.normalize(to_tensor(music).double(), dim=-1)
    if v.shape != m.shape or v.ndim != 2:
        raise VmasError(f"retrieval: video {tuple(v.shape)} and music {tuple(m.shape)} embeddings must both be [N, D]")
    sim = v @ m.T  # [N, N]
    true = sim.diagonal()[:, None]  # [N, 1]
    return (sim >= true).sum(1) - 1  # [N]; minus the true track itself


def recall_at_k(video: torch.Tensor, music: torch.Tensor, ks: tp.Sequence[int] = (1, 10)) -> tp.Dict[str, float]:
    ranks = retrieval_ranks(video, music)
    return {f"R@{k}": float((ranks < k).double().mean()) for k in ks}


class VideoMusicRetrieval:
    """Torchmetrics-style: ``update(video_emb [B, D], music_emb [B, D])`` over the test set, ``compute()``."""

    def __init__(self, ks: tp.Sequence[int] = (1, 10)):
        self.ks = tuple(ks)
        self.reset()

    def reset(self) -> None:
        self.video: tp.List[torch.Tensor] = []
        self.music: tp.List[torch.Tensor] = []

    def update(self, video, music) -> None:
        self.video.append(to_tensor(video).detach().cpu().double().reshape(-1, to_tensor(video).shape[-1]))
        self.music.append(to_tensor(music).detach().cpu().double().reshape(-1, to_tensor(music).shape[-1]))

    @property
    def num_pairs(self) -> int:
        return sum(len(v) for v in self.video)

    def compute(self) -> tp.Dict[str, float]:
        if self.num_pairs == 0:
            raise VmasError("retrieval: no embedding pairs were added")
        return recall_at_k(torch.cat(self.video), torch.cat(self.music), self.ks)

    def meta(self) -> tp.Dict[str, tp.Any]:
        return {"pairs": self.num_pairs, "ks": list(self.ks), "candidates": "the N ground-truth tracks",
                "ties": "counted against the query"}
