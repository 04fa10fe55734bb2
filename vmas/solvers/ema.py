"""Exponential moving average of the model weights (SPEC §5: decay 0.99 every 10 steps, both configurable).

The EMA copy is what evaluation and the exported inference checkpoint use. It is kept in float32 on the model's
device whatever the training precision (bf16 weights averaged in bf16 would round most updates away), covers every
floating-point entry of the state dict (frozen parts included, so the export is complete) and copies integer
buffers as they are.
"""
from __future__ import annotations

import contextlib
import typing as tp

import torch
from torch import nn


def _gathered(module: nn.Module):
    """Under DeepSpeed ZeRO-3 parameters are partitioned: gather them (read-only) while the EMA reads them."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


class EMA:
    """``shadow ← decay · shadow + (1 − decay) · weights``, applied on every ``every``-th optimiser step.

    Args:
        module (nn.Module): the model whose ``state_dict`` is tracked (the unwrapped model, not the engine).
        decay (float): per-update decay (0.99).
        every (int): update interval in optimiser steps (10); between updates the shadow is left as is.
    """

    def __init__(self, module: nn.Module, decay: float = 0.99, every: int = 1):
        if not 0.0 <= decay < 1.0 or every < 1:
            raise ValueError(f"EMA needs 0 <= decay < 1 and every >= 1, got decay={decay}, every={every}")
        self.decay, self.every = decay, every
        self.num_updates = 0
        with _gathered(module), torch.no_grad():
            self.shadow: tp.Dict[str, torch.Tensor] = {
                k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone())
                for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> bool:
        """Call after optimiser step number ``step`` (1-based); returns whether the shadow moved."""
        if step % self.every != 0:
            return False
        with _gathered(module):
            for k, v in module.state_dict().items():
                s = self.shadow[k]
                if s.is_floating_point():
                    s.lerp_(v.detach().to(s.dtype), 1.0 - self.decay)
                else:
                    s.copy_(v)
        self.num_updates += 1
        return True

    def state_dict(self) -> tp.Dict[str, tp.Any]:
        return {"decay": self.decay, "every": self.every, "num_updates": self.num_updates,
                "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: tp.Mapping[str, tp.Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            from vmas.errors import CheckpointError

            raise CheckpointError(f"EMA state does not fit the model (differs in {sorted(missing)[:3]})")
        self.num_updates = int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    def weights(self, dtype: tp.Optional[torch.dtype] = None) -> tp.Dict[str, torch.Tensor]:
        """The averaged state dict (CPU), optionally cast for export."""
        return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu().clone()
                for k, v in self.shadow.items()}
