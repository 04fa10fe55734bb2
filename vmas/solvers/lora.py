"""LoRA adapters for fine-tuning (``optim.lora_rank > 0``): low-rank updates on the ``nn.Linear`` layers under
``optim.lora_targets``, everything else under those prefixes frozen, and a merge back into plain weights for the
export (so ``vmas generate`` loads a fine-tuned model like any other).

Why not ``peft``: its wrappers rename every adapted layer (``base_layer.weight``, ``base_model.model.*``), which
would change the checkpoint keys that the EMA, ZeRO-3 partitioning and the inference export rely on, and merging
back is all we need from it. Here an adapted layer keeps its weight and gains two parameters beside it::

    y = x Wᵀ (+ b) + (alpha / r) · (x Aᵀ) Bᵀ        A [r, in] (Kaiming-uniform), B [out, r] (zeros: starts as W)

``lm.transformer.layers.0.linear1.weight`` stays; ``...linear1.lora_A`` / ``lora_B`` are added (forward hook).
:func:`merge_lora` folds ``W + (alpha / r) · B A`` into the weights and drops the adapter keys.
"""
from __future__ import annotations

import math
import typing as tp

import torch
from torch import nn

from vmas.errors import ConfigError

LORA_KEYS = ("lora_A", "lora_B")


def _hook(module: nn.Linear, inputs: tp.Tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    x = inputs[0]
    delta = nn.functional.linear(nn.functional.linear(x.to(module.lora_A.dtype), module.lora_A), module.lora_B)
    return output + (module.lora_scale * delta).to(output.dtype)


def apply_lora(model: nn.Module, targets: tp.Sequence[str], rank: int, alpha: float) -> tp.List[str]:
    """Add adapters to every ``nn.Linear`` whose name starts with one of ``targets`` and freeze every other
    parameter under those prefixes; returns the adapted layer names (an unmatched prefix is a config error)."""
    adapted = []
    for prefix in targets:
        hits = [n for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)]
        if not hits:
            raise ConfigError(f"optim.lora_targets: '{prefix}' matches no nn.Linear of the model (e.g. 'lm.transformer')")
    for name, p in model.named_parameters():
        if any(name.startswith(t) for t in targets):
            p.requires_grad_(False)
    for name, m in list(model.named_modules()):
        if not (isinstance(m, nn.Linear) and any(name.startswith(t) for t in targets)):
            continue
        a = torch.empty(rank, m.in_features, device=m.weight.device, dtype=m.weight.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        m.lora_A = nn.Parameter(a)  # [r, in]
        m.lora_B = nn.Parameter(torch.zeros(m.out_features, rank, device=m.weight.device, dtype=m.weight.dtype))
        m.lora_scale = alpha / rank
        m.register_forward_hook(_hook)
        adapted.append(name)
    return adapted


def merge_lora(state: tp.Mapping[str, torch.Tensor], scale: float) -> tp.Dict[str, torch.Tensor]:
    """A state dict with adapters -> the plain one: ``W += scale · B A`` for every adapted layer, adapter keys
    dropped (``scale`` = alpha / rank)."""
    out = {k: v for k, v in state.items() if not k.endswith(LORA_KEYS)}
    for key, a in state.items():
        if not key.endswith(".lora_A"):
            continue
        layer = key[: -len(".lora_A")]
        b = state[f"{layer}.lora_B"]
        w = out[f"{layer}.weight"]
        out[f"{layer}.weight"] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out
