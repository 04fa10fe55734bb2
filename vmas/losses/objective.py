"""The training objective of SPEC §5: ``L = L_ar + α · L_c`` from one forward pass of the model.

- ``L_ar``: beat-weighted cross-entropy over the delay pattern (:func:`vmas.losses.beat.beat_weighted_ce`),
  normalised by the global ``Σ W`` so the loss of a global batch does not depend on how it is split over ranks.
- ``L_c``: video ↔ music InfoNCE (:class:`vmas.losses.contrastive.ContrastiveLoss`), on the clips that kept their
  video condition only: a CFG-dropped clip's logits never saw its video, so it is no positive pair.

The contrastive head is part of the model (the retrieval metric reuses it, and it is saved with the weights), so
the objective holds no parameters and is handed the head and the codebooks with each call.
"""
from __future__ import annotations

import typing as tp

import torch
from torch import nn

from vmas.losses.beat import beat_weighted_ce


class VMASObjective:
    """``(model output, batch) -> (total loss, stats)``.

    ``stats`` is one detached float32 vector (cheap to accumulate and all-reduce), named by :attr:`stat_names`:
    ``[loss, ar, ce_q1..ce_qK, contrastive, beat_w (mean weight), temp (τ, 0 without the contrastive term)]``.

    Args:
        n_q (int): codebooks K (one ``ce_qk`` stat each).
        contrastive_weight (float): α; 0 switches the contrastive term off.
    """

    def __init__(self, n_q: int, contrastive_weight: float):
        self.n_q = n_q
        self.alpha = contrastive_weight

    @property
    def stat_names(self) -> tp.List[str]:
        return ["loss", "ar", *[f"ce_q{k + 1}" for k in range(self.n_q)], "contrastive", "beat_w", "temp"]

    def __call__(self, out: tp.Any, batch: tp.Mapping[str, torch.Tensor], head: tp.Optional[nn.Module] = None,
                 codebooks: tp.Optional[torch.Tensor] = None) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """out: ``VMASOutput`` (logits [B,K,S,card], seq [B,K,S], valid [K,S], video_tokens [B,Tv,C], video_kept
        [B]); batch: ``beat_weights`` [B, Ta]; head / codebooks [K, card, D]: the model's contrastive head and
        codec codebooks. Returns total (scalar, with grad) and stats [K + 5]."""
        w = batch["beat_weights"]  # [B, Ta]
        ar, per_cb = beat_weighted_ce(out.logits, out.seq, out.valid, w, global_normalizer=True)  # scalar, [K]
        if head is not None and self.alpha > 0:
            # the clips that kept their video: a data-dependent batch size, so one device -> host sync per step
            # (a single nonzero shared by both selections, not one per boolean-mask index)
            kept = out.video_kept.nonzero()[:, 0]  # [n] indices
            lc = head(out.video_tokens.index_select(0, kept), out.logits.index_select(0, kept), out.valid,
                      codebooks)  # scalar
            temp = (1.0 / head.logit_scale.detach().float()).reshape(())
        else:
            lc = ar.new_zeros(())
            temp = ar.new_zeros(()).float()
        total = ar + self.alpha * lc
        stats = torch.cat([total.detach().float()[None], ar.detach().float()[None], per_cb.detach().float(),
                           lc.detach().float()[None], w.float().mean()[None], temp[None]])  # [K + 5]
        return total, stats
