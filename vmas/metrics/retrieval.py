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


def _ref_start(clip: tp.Dict[str, tp.Any]) -> float:
    """Where the clip starts inside its reference file: tools/evaluate.py resolves ``ref_path``/``ref_span``
    (a clip-length file from --reference starts at 0); a raw manifest row uses its ``start``."""
    if "ref_path" in clip:
        return float(clip["ref_span"][0]) if clip.get("ref_span") else 0.0
    return float(clip.get("start") or 0.0)


@torch.no_grad()
def model_retrieval_embeddings(pipe, clips: tp.Sequence[tp.Dict[str, tp.Any]], batch_size: int = 8,
                               progress: bool = False, music_from: str = "codes"
                               ) -> tp.Tuple[torch.Tensor, torch.Tensor, tp.List[str]]:
    """Contrastive embeddings of N test pairs from a loaded :class:`vmas.pipeline.VMASPipeline`.

    Video: ``clip_seconds`` of the clip's video at the config's fps/size -> encoder -> ``embed_video``.
    Music: the same window of the ground-truth music -> EnCodec codes, then

    - ``music_from="codes"``: ``embed_music(codes=...)``, the one-hot version of the training-time feature;
    - ``music_from="logits"``: the LM's teacher-forced predictions of those codes under the *null* condition (it
      never sees a video), ``embed_music(logits=...)``. This is the feature the heads were trained on (soft
      distributions, not one-hots), without letting the query video into the music side.

    Each clip needs ``video``, ``audio`` (a file) and optional ``start``.
    Returns video [N, P], music [N, P] (unit norm) and the clip ids.
    """
    if music_from not in ("codes", "logits"):
        raise ValueError(f"music_from must be 'codes' or 'logits', not {music_from!r}")
    from tqdm import tqdm

    from vmas.data import media

    model, codec, cfg = pipe.model, pipe.codec, pipe.config
    if getattr(model, "contrastive", None) is None:
        raise VmasError("retrieval: this model has no contrastive heads (loss.contrastive_weight was 0); use a "
                        "model trained with the contrastive loss")
    codebooks = model.codebooks if model.codebooks.numel() else codec.codebooks()
    device = next(model.parameters()).device
    seconds = float(cfg.data.clip_seconds)
    video, music, ids = [], [], []
    todo = [c for c in clips if c.get("video") and c.get("ref_path", c.get("audio"))]
    for i in tqdm(range(0, len(todo), batch_size), desc="retrieval embeddings", disable=not progress):
        chunk = todo[i: i + batch_size]
        frames = torch.stack([media.read_video_frames(c["video"], fps=cfg.data.fps, size=cfg.data.image_size,
                                                      start=float(c.get("start") or 0.0), duration=seconds)[0]
                              for c in chunk])  # [B, T, H, W, 3] uint8
        wav = torch.stack([media.read_audio(c.get("ref_path") or c["audio"], sr=codec.sample_rate,
                                            start=_ref_start(c), duration=seconds)
                           for c in chunk])  # [B, N]
        codes = codec.encode(wav[:, None].to(device))  # [B, K, T]
        vt = model.encode_video(frames.to(device))  # [B, Tv, C]
        video.append(model.contrastive.embed_video(vt).cpu())
        if music_from == "codes":
            music.append(model.contrastive.embed_music(codes=codes, codebooks=codebooks.to(device)).cpu())
        else:
            drop = torch.ones(codes.shape[0], dtype=torch.bool, device=device)  # null condition: vt is not seen
            out = model(None, codes, drop_video=drop, drop_tags=drop, video_tokens=vt)
            music.append(model.contrastive.embed_music(logits=out.logits, codebooks=codebooks.to(device),
                                                       valid=out.valid).cpu())
        ids += [c["id"] for c in chunk]
    if not ids:
        raise VmasError("retrieval: no manifest clip has both 'video' and reference 'audio'")
    return torch.cat(video), torch.cat(music), ids
