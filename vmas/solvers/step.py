"""The module an engine wraps: model forward + objective, so one ``engine(**inputs)`` call is one micro-batch's
loss. Engines (DeepSpeed in particular) own forward, backward and the optimiser step of exactly this module."""
from __future__ import annotations

import typing as tp

import torch
from torch import nn

from vmas.losses.objective import VMASObjective
from vmas.solvers.validation import branch_losses


class TrainStep(nn.Module):
    """``(frames, codes, beat_weights, tag_emb, tag_mask, beat) -> (total, stats)``; see :class:`VMASObjective`.

    Args:
        model (nn.Module): the VMAS model (its ``contrastive`` head and ``codebooks`` feed the objective).
        objective (VMASObjective): holds no parameters, so the state dict is ``model.*`` only.
    """

    def __init__(self, model: nn.Module, objective: VMASObjective):
        super().__init__()
        self.model = model
        self.objective = objective

    def stat_names(self) -> tp.List[str]:
        return self.objective.stat_names

    def forward(self, frames: torch.Tensor, codes: torch.Tensor, beat_weights: torch.Tensor,
                tag_emb: tp.Optional[torch.Tensor] = None, tag_mask: tp.Optional[torch.Tensor] = None,
                beat: tp.Optional[torch.Tensor] = None, onsets: tp.Optional[torch.Tensor] = None,
                motion: tp.Optional[torch.Tensor] = None, validate: tp.Optional[tp.Sequence[str]] = None,
                no_video: tp.Optional[torch.Tensor] = None):
        """frames uint8 [B,T,H,W,3], codes long [B,K,Ta], beat_weights [B,Ta], tag_emb [B,N,Ct], beat [B,2],
        onsets [B,Ta] (the onset oracle's input, a diagnostic), motion [B,T-1] (the motion condition's input),
        no_video [B] bool (music-only clips, issue 25: null video condition, no contrastive pair).

        ``validate`` (branch names): return the CE [len(validate)] of each validation branch instead of the loss,
        so validation runs through the engine's forward (ZeRO-3 gathers partitioned weights there, bf16 casts)."""
        if tag_emb is not None:  # text-encoder output is float32; the fuser may run in bf16
            tag_emb = tag_emb.to(next(self.model.fuser.parameters()).dtype)
        if validate is not None:
            inputs = {"frames": frames, "codes": codes, "beat_weights": beat_weights, "tag_emb": tag_emb,
                      "tag_mask": tag_mask, "beat": beat, "onsets": onsets, "motion": motion}
            return branch_losses(self.model, inputs, validate)
        extra = {} if no_video is None else {"no_video": no_video}  # absent: the paired-only call, unchanged
        out = self.model(frames, codes, tag_emb, tag_mask, beat=beat, onsets=onsets, motion=motion, **extra)
        return self.objective(out, {"beat_weights": beat_weights}, self.model.contrastive, self.model.codebooks)
