"""Loader batch -> the model's inputs for one micro-batch: device placement, beat weights of this run's loss
config, tag embeddings and beat grids.

Shared by the training step and validation, so both see the same conditions for the same clip.
"""
from __future__ import annotations

import typing as tp

import torch

from vmas.alignment import beat_weights, video_beats
from vmas.beat_grids import clip_grids
from vmas.config import DataConfig, LossConfig


def split_tags(text: str, max_tags: int) -> tp.List[str]:
    """``"piano, calm, "`` -> ``["piano", "calm"]`` (at most ``max_tags``)."""
    return [t.strip() for t in text.split(",") if t.strip()][:max_tags]


def run_beat_weights(batch: tp.Mapping[str, tp.Any], loss: LossConfig, data: DataConfig) -> torch.Tensor:
    """Beat weights float [B, Ta] of this run's ``loss`` config from the shard's raw music beats and motion curve.

    The shards also store weights, but those froze the preprocessing-time w, δ, λ; recomputing (cheap vector
    ops) keeps an ablation such as ``loss.beat_lambda=1`` honest without re-sharding.
    """
    if "music_beats" not in batch or "motion" not in batch:
        return batch["beat_weights"]
    bm = batch["music_beats"].bool()  # [B, Ta]
    vb = torch.stack([video_beats(m, num_frames=bm.shape[-1], window=loss.beat_window, fps=data.fps,
                                  frame_rate=data.frame_rate) for m in batch["motion"]])  # [B, Ta]
    if "has_video" in batch and not bool(batch["has_video"].all()):
        # music-only clips (issue 25): no picture, so every music onset counts as aligned (W = 1 at onsets, λ
        # elsewhere), as vmas.data.shards.music_only_alignment stored them
        vb = torch.where(batch["has_video"].bool()[:, None], vb, torch.ones_like(vb))
    return beat_weights(bm, vb, delta=loss.beat_delta, lam=loss.beat_lambda).float()


class BatchInputs:
    """Turns a loader batch (DEVELOPERS.md) into the keyword arguments of :class:`vmas.solvers.step.TrainStep`.

    Args:
        loss (LossConfig) / data (DataConfig): beat-weight settings and the data rates.
        max_tags (int): tags kept per clip (``model.tags.max_tags``).
        beat_condition (bool): fit each clip's beat grid (``model.lm.beat_condition``).
        text_encoder (callable, optional): tag lists -> (emb [B, N, Ct], mask [B, N]); None = no tag condition.
        onset_oracle (bool): pass the clips' music onsets as ``onsets`` (``model.lm.onset_oracle``, a diagnostic).
        motion (bool): pass the shards' motion curves as ``motion`` (``model.lm.motion_condition``).
    """

    def __init__(self, loss: LossConfig, data: DataConfig, max_tags: int, beat_condition: bool,
                 text_encoder: tp.Optional[tp.Callable] = None, onset_oracle: bool = False, motion: bool = False):
        self.loss, self.data = loss, data
        self.max_tags, self.beat_condition = max_tags, beat_condition
        self.text_encoder = text_encoder
        self.onset_oracle = onset_oracle
        self.motion = motion

    def __call__(self, batch: tp.Mapping[str, tp.Any], device: torch.device) -> tp.Dict[str, tp.Any]:
        out = {
            "frames": batch["frames"].to(device),  # uint8 [B, T, H, W, 3]
            "codes": batch["codes"].to(device),  # long [B, K, Ta]
            "beat_weights": run_beat_weights(batch, self.loss, self.data).to(device),  # float [B, Ta]
        }
        tags = [split_tags(t, self.max_tags) for t in batch["tags"]]
        if self.text_encoder is not None:
            emb, mask = self.text_encoder(tags)  # [B, N, Ct], [B, N]
            out["tag_emb"], out["tag_mask"] = emb.to(device), mask.to(device)
        if self.beat_condition:  # tempo control: each clip's beat grid, fitted to its own music
            out["beat"] = clip_grids(batch["music_beats"], tags, self.data.frame_rate).to(device)  # [B, 2]
        if self.onset_oracle:  # diagnostic: the music's own onsets at each step (issue 17)
            out["onsets"] = batch["music_beats"].float().to(device)  # [B, Ta]
        if self.motion:  # the motion condition: the curves preprocessing computed from these frames
            out["motion"] = batch["motion"].float().to(device)  # [B, T-1]
        if "has_video" in batch and not bool(batch["has_video"].all()):  # music-only clips in the batch (issue 25)
            out["no_video"] = ~batch["has_video"].bool().to(device)  # [B]; absent when all are paired: today's call
        return out
