"""Teacher-forced validation under each condition branch: how many nats per token each condition is worth.

Each branch scores the same clips with some conditions replaced by their learned null tokens (the CFG path):

    ce              video + tags (+ beat grid)         the model as used
    ce_video        video only                         ce_tags       tags only
    ce_null         nothing (the CFG branch)           ce_wrong_video  the next clip's video, no tags
    ce_no_beat      video + tags without the beat grid (models with the beat condition)

and gains are differences of two branches: ``cond_gain = ce_null - ce`` near 0 means the model ignores its
conditions and predicts music statistics only (the failure CFG cannot fix); ``video_gain = ce_wrong_video -
ce_video`` says whether it uses *this* video; ``beat_gain = ce_no_beat - ce`` the same for the grid.
"""
from __future__ import annotations

import dataclasses
import typing as tp

import torch
from torch import nn

from vmas.losses.beat import beat_weighted_ce


@dataclasses.dataclass(frozen=True)
class Branch:
    """One validation branch: which conditions are dropped (replaced by null tokens) for every clip."""

    name: str
    drop_video: bool
    drop_tags: bool
    drop_beat: bool
    wrong_video: bool = False  # the next clip's video tokens (roll by one in the batch; needs B >= 2)
    needs_beat: bool = False  # only for models fed a beat grid


BRANCHES = (
    Branch("ce", drop_video=False, drop_tags=False, drop_beat=False),
    Branch("ce_video", drop_video=False, drop_tags=True, drop_beat=False),
    Branch("ce_tags", drop_video=True, drop_tags=False, drop_beat=False),
    Branch("ce_null", drop_video=True, drop_tags=True, drop_beat=True),
    Branch("ce_wrong_video", drop_video=False, drop_tags=True, drop_beat=False, wrong_video=True),
    Branch("ce_no_beat", drop_video=False, drop_tags=False, drop_beat=True, needs_beat=True),
)

# gain name -> (worse branch, better branch): reported when both branches were scored
GAINS = {"cond_gain": ("ce_null", "ce"), "video_gain": ("ce_wrong_video", "ce_video"),
         "beat_gain": ("ce_no_beat", "ce")}


def active_branches(inputs: tp.Mapping[str, tp.Any], batch_size: int) -> tp.List[Branch]:
    has_beat = inputs.get("beat") is not None
    return [b for b in BRANCHES if (has_beat or not b.needs_beat) and (batch_size >= 2 or not b.wrong_video)]


@torch.no_grad()
def branch_ce(model: nn.Module, inputs: tp.Mapping[str, tp.Any]) -> tp.Dict[str, float]:
    """Unweighted CE of one batch (the model's input dict, :class:`vmas.solvers.inputs.BatchInputs`) per branch.

    The video is encoded once and reused by every branch.
    """
    codes = inputs["codes"]  # [B, K, Ta]
    B = codes.shape[0]
    vt = model.encode_video(inputs["frames"])  # [B, Tv, C]
    tags = (inputs.get("tag_emb"), inputs.get("tag_mask"))
    ones = torch.ones_like(inputs["beat_weights"])  # [B, Ta]: plain CE, comparable across branches

    def flag(on: bool) -> torch.Tensor:  # [B] bool
        return torch.full((B,), on, dtype=torch.bool, device=codes.device)

    def video_side(name: str, wrong: bool) -> tp.Optional[torch.Tensor]:  # per-step inputs that come with a video
        x = inputs.get(name)
        return x.roll(1, dims=0) if (wrong and x is not None) else x

    res = {}
    for br in active_branches(inputs, B):
        out = model(None, codes, *tags, drop_video=flag(br.drop_video), drop_tags=flag(br.drop_tags),
                    video_tokens=vt.roll(1, dims=0) if br.wrong_video else vt, beat=inputs.get("beat"),
                    drop_beat=flag(br.drop_beat), onsets=video_side("onsets", br.wrong_video),
                    motion=video_side("motion", br.wrong_video))
        ce, _ = beat_weighted_ce(out.logits, out.seq, out.valid, ones)
        res[br.name] = float(ce)
    return res


def evaluate_branches(model: nn.Module, batches: tp.Iterable[tp.Mapping[str, tp.Any]],
                      prepare: tp.Callable[[tp.Mapping[str, tp.Any]], tp.Mapping[str, tp.Any]],
                      max_batches: int = 0) -> tp.Dict[str, float]:
    """Clip-weighted mean CE per branch over ``batches`` (loader dicts, turned into model inputs by ``prepare``),
    the gains, and ``clips``. The model is scored in eval mode and put back in its previous mode.

    With no clips it returns ``{"clips": 0}`` (the caller knows which set was empty and says so).
    """
    was_training = model.training
    model.eval()
    sums: tp.Dict[str, float] = {}
    n = 0
    try:
        for i, raw in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            inputs = prepare(raw)
            B = inputs["codes"].shape[0]
            for name, ce in branch_ce(model, inputs).items():
                sums[name] = sums.get(name, 0.0) + ce * B
            n += B
    finally:
        model.train(was_training)
    if n == 0:
        return {"clips": 0}
    res = {k: v / n for k, v in sums.items()}
    for gain, (worse, better) in GAINS.items():
        if worse in res and better in res:
            res[gain] = res[worse] - res[better]
    res["clips"] = n
    return res
