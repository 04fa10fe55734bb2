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


def branch_names(has_beat: bool) -> tp.List[str]:
    """Every branch a model scores (the same on every rank, whatever a rank's batch size)."""
    return [b.name for b in BRANCHES if has_beat or not b.needs_beat]


@torch.no_grad()
def branch_losses(model: nn.Module, inputs: tp.Mapping[str, tp.Any], names: tp.Sequence[str]) -> torch.Tensor:
    """Unweighted CE float32 [len(names)] of one batch (the model's input dict,
    :class:`vmas.solvers.inputs.BatchInputs`) per named branch; the video is encoded once for every branch.

    Every branch runs whatever the batch size (``ce_wrong_video`` of a 1-clip batch is its own video, so callers
    weight it 0): under ZeRO-3 each forward gathers parameters collectively, so all ranks must run the same ones.
    """
    codes = inputs["codes"]  # [B, K, Ta]
    B = codes.shape[0]
    vt = model.encode_video(inputs["frames"])  # [B, Tv, C]
    tags = (inputs.get("tag_emb"), inputs.get("tag_mask"))
    ones = torch.ones_like(inputs["beat_weights"])  # [B, Ta]: plain CE, comparable across branches
    by_name = {b.name: b for b in BRANCHES}

    def flag(on: bool) -> torch.Tensor:  # [B] bool
        return torch.full((B,), on, dtype=torch.bool, device=codes.device)

    def video_side(name: str, wrong: bool) -> tp.Optional[torch.Tensor]:  # per-step inputs that come with a video
        x = inputs.get(name)
        return x.roll(1, dims=0) if (wrong and x is not None) else x

    res = []
    for name in names:
        br = by_name[name]
        out = model(None, codes, *tags, drop_video=flag(br.drop_video), drop_tags=flag(br.drop_tags),
                    video_tokens=vt.roll(1, dims=0) if br.wrong_video else vt, beat=inputs.get("beat"),
                    drop_beat=flag(br.drop_beat), onsets=video_side("onsets", br.wrong_video),
                    motion=video_side("motion", br.wrong_video))
        ce, _ = beat_weighted_ce(out.logits.float(), out.seq, out.valid, ones)
        res.append(ce.float())
    return torch.stack(res)


@torch.no_grad()
def branch_ce(model: nn.Module, inputs: tp.Mapping[str, tp.Any]) -> tp.Dict[str, float]:
    """Unweighted CE of one batch per branch that applies to it (``ce_wrong_video`` needs 2 clips)."""
    names = [b.name for b in active_branches(inputs, inputs["codes"].shape[0])]
    return dict(zip(names, branch_losses(model, inputs, names).tolist()))


def _summary(names: tp.Sequence[str], sums: torch.Tensor, counts: torch.Tensor) -> tp.Dict[str, float]:
    """Clip-weighted means, the gains and ``clips`` (``{"clips": 0}`` when nothing was scored)."""
    if counts.numel() == 0 or counts.max() == 0:
        return {"clips": 0}
    res = {n: float(s / c) for n, s, c in zip(names, sums.tolist(), counts.tolist()) if c > 0}
    for gain, (worse, better) in GAINS.items():
        if worse in res and better in res:
            res[gain] = res[worse] - res[better]
    res["clips"] = int(counts.max())
    return res


def evaluate_branches(model: nn.Module, batches: tp.Iterable[tp.Mapping[str, tp.Any]],
                      prepare: tp.Callable[[tp.Mapping[str, tp.Any]], tp.Mapping[str, tp.Any]],
                      max_batches: int = 0) -> tp.Dict[str, float]:
    """Clip-weighted mean CE per branch over ``batches`` (loader dicts, turned into model inputs by ``prepare``),
    the gains, and ``clips``, on one process with the bare model (tools; the solver uses :func:`evaluate_sharded`).
    The model is scored in eval mode and put back in its previous mode.

    With no clips it returns ``{"clips": 0}`` (the caller knows which set was empty and says so).
    """
    call = lambda inputs, names: branch_losses(model, inputs, names)  # noqa: E731
    return evaluate_sharded(call, model, batches, prepare, max_batches=max_batches)


def evaluate_sharded(call: tp.Callable[[tp.Mapping[str, tp.Any], tp.Sequence[str]], torch.Tensor], module: nn.Module,
                     batches: tp.Iterable[tp.Mapping[str, tp.Any]],
                     prepare: tp.Callable[[tp.Mapping[str, tp.Any]], tp.Mapping[str, tp.Any]],
                     max_batches: int = 0, rank: int = 0, world_size: int = 1,
                     global_index: tp.Optional[tp.Callable[[int], int]] = None,
                     dummy: tp.Optional[tp.Callable[[], tp.Mapping[str, tp.Any]]] = None) -> tp.Dict[str, float]:
    """Validation of this rank's share of the batches, reduced over ranks: the result of one rank over all batches.

    Args:
        call: (model inputs, branch names) -> CE [len(names)]; the solver passes the engine's forward
            (``engine(**inputs, validate=names)``), so ZeRO-3 gathers its partitioned weights as in training.
        module: put in eval mode for the duration (and back).
        batches: this rank's loader batches; with ``ShardStream(block=B)`` rank ``r`` holds whole batches of the
            1-rank order, so the sums over ranks are the 1-rank sums (equal up to float summation order).
        max_batches: cap on *global* batches (``global_index(k)``: the 1-rank index of this rank's k-th batch).
        dummy: a batch for ranks that ran out while another still scores (ZeRO-3 forwards are collective, every
            rank must run as many); its CE is not counted.
    """
    import torch.distributed as dist

    multi = world_size > 1 and dist.is_available() and dist.is_initialized()
    was_training = module.training
    module.eval()
    names: tp.Optional[tp.List[str]] = None
    sums = counts = torch.zeros(0, dtype=torch.float64)
    it = iter(batches)
    k = 0
    try:
        while True:
            raw = None
            if not max_batches or (global_index(k) if global_index else k) < max_batches:
                raw = next(it, None)
            if multi:  # lock-step: stop only when every rank is out of batches
                more = torch.tensor([float(raw is not None)])
                dist.all_reduce(more, op=dist.ReduceOp.MAX)
                if more.item() == 0:
                    break
            elif raw is None:
                break
            src = raw if raw is not None else (dummy() if dummy is not None else None)
            if src is None:
                raise RuntimeError("evaluate_sharded: a rank ran out of batches and no dummy batch was given")
            inputs = prepare(src)
            if names is None:
                names = branch_names(inputs.get("beat") is not None)
                sums = torch.zeros(len(names), dtype=torch.float64)
                counts = torch.zeros(len(names), dtype=torch.float64)
            with torch.no_grad():
                ce = call(inputs, names).detach().double().cpu()
            k += 1
            if raw is None:
                continue
            B = inputs["codes"].shape[0]
            w = torch.tensor([0.0 if (B < 2 and n == "ce_wrong_video") else float(B) for n in names],
                             dtype=torch.float64)
            sums += ce * w
            counts += w
    finally:
        module.train(was_training)
    if multi:
        both = torch.cat([sums, counts]) if names is not None else torch.zeros(0, dtype=torch.float64)
        dist.all_reduce(both)
        sums, counts = both[:len(both) // 2], both[len(both) // 2:]
    return _summary(names or [], sums, counts)
