"""Synthetic training clips: random tensors with the config's shapes, for smoke runs and tests without shards.

Clip ``i`` is a pure function of ``(seed, i % num_clips)``, so any rank can build any clip of the global batch
and a resumed run sees the same clips as an uninterrupted one.
"""
from __future__ import annotations

import typing as tp

import torch

from vmas.config import Config

SYNTHETIC_TAGS = ("piano", "drums", "strings", "synth", "calm", "energetic", "90 BPM", "120 BPM")


class SyntheticClips:
    """Random clips with the config's shapes; clip ``i`` depends only on ``(seed, i % num_clips)``.

    Beat weights have the same number of aligned frames in every clip, so every micro-batch has the same
    ``Σ W`` and the beat-weighted CE of a global batch is the same however it is split over ranks.

    Args:
        cfg (Config): sizes (``data``, ``model.lm.n_q/card``, ``model.tags.enabled``) and ``loss.beat_lambda``.
        seed (int): the run's seed (``train.seed``).
        num_clips (int): size of the pool cycled through (a small pool the model can learn).
    """

    def __init__(self, cfg: Config, seed: int, num_clips: int):
        d, m = cfg.data, cfg.model
        self.T = d.num_frames
        self.H = d.image_size
        self.Ta = round(d.clip_seconds * d.frame_rate)
        self.K, self.card = m.lm.n_q, m.lm.card
        self.lam = cfg.loss.beat_lambda
        self.seed, self.num_clips = seed, max(1, num_clips)
        self.tags = m.tags.enabled

    def clip(self, index: int) -> tp.Dict[str, tp.Any]:
        """One decoded sample in the loader's layout (``vmas.data.loader.decode_sample``)."""
        c = index % self.num_clips
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + c)
        n_beats = max(2, self.Ta // 10)
        beats = torch.zeros(self.Ta, dtype=torch.bool)
        beats[torch.randperm(self.Ta, generator=g)[:n_beats]] = True
        aligned = torch.zeros(self.Ta, dtype=torch.bool)
        aligned[beats.nonzero()[torch.randperm(n_beats, generator=g)[: n_beats // 2], 0]] = True
        tags = ""
        if self.tags:
            pick = torch.randperm(len(SYNTHETIC_TAGS), generator=g)[:3]
            tags = ", ".join(SYNTHETIC_TAGS[i] for i in pick)
        return {
            "frames": torch.randint(0, 256, (self.T, self.H, self.H, 3), generator=g, dtype=torch.uint8),  # [T,H,W,3]
            "codes": torch.randint(0, self.card, (self.K, self.Ta), generator=g),  # [K, Ta]
            "music_beats": beats,  # [Ta]
            "motion": torch.rand(self.T - 1, generator=g),  # [T-1]
            "beat_weights": torch.where(aligned, 1.0, self.lam).float(),  # [Ta]
            "tags": tags, "key": f"synthetic/{c:06d}", "start": 0.0,
        }
