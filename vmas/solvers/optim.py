"""Optimiser, parameter groups and learning-rate schedule (SPEC §5, MusicGen recipe).

- AdamW with β = (0.9, 0.95) and decoupled weight decay 0.1, or D-Adaptation Adam (``dadaptation.DAdaptAdam``,
  lr 1.0: the method estimates the step size itself, ``lr`` then only scales it).
- Parameters are split into *pretrained* parts (loaded from a Hiera / MusicGen checkpoint: they get
  ``optim.lr_pretrained``) and *new* parts (condition fuser, contrastive heads, anything randomly initialised: they
  get ``optim.lr``), and each into decay / no-decay (biases, norms, the learned temperature: weight decay on a
  1-D scale only shrinks it toward zero and fights the norm layers).
- Frozen parameters (``requires_grad=False``: the encoder when ``model.encoder.freeze``, prefixes in
  ``optim.freeze``) never enter the optimiser.
- Schedule: linear warm-up over ``warmup_steps`` then cosine decay to ``min_lr_ratio · lr`` at ``max_steps``; one
  multiplicative factor for every group, so the pretrained / new ratio is kept throughout.
"""
from __future__ import annotations

import math
import typing as tp

import torch
from torch import nn

from vmas.errors import ConfigError
from vmas.solvers.lora import LORA_KEYS

if tp.TYPE_CHECKING:
    from vmas.config import Config, OptimConfig

OPTIMIZERS = ("adamw", "dadam")


def apply_freeze(model: nn.Module, prefixes: tp.Sequence[str]) -> tp.List[str]:
    """``requires_grad_(False)`` on every parameter whose name starts with one of ``prefixes``; returns the names.

    An unknown prefix is a config error (a typo would otherwise silently train everything).
    """
    names = [n for n, _ in model.named_parameters()]
    frozen: tp.List[str] = []
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"optim.freeze: '{prefix}' matches no parameter (top-level modules: {', '.join(tops)})")
        frozen.extend(hits)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return frozen


def pretrained_prefixes(cfg: "Config") -> tp.List[str]:
    """Module prefixes whose weights come from a pretrained checkpoint (they train with ``optim.lr_pretrained``)."""
    if cfg.train.init_from:  # fine-tuning: the whole model comes from a checkpoint
        return [""]
    out = []
    if cfg.model.encoder.pretrained:
        out.append("encoder.")
    if cfg.model.lm.pretrained:
        out.append("lm.")
    return out


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or name.endswith(".bias") or "norm" in name or name.endswith("log_scale")


def param_groups(model: nn.Module, optim: "OptimConfig",
                 pretrained: tp.Sequence[str] = ()) -> tp.List[tp.Dict[str, tp.Any]]:
    """Trainable parameters -> up to 4 groups ``{pretrained,new} x {decay,no_decay}`` with their lr / weight decay.

    Each group carries a ``name`` (shown in logs) and ``base_lr`` (the lr before the schedule factor).
    """
    buckets: tp.Dict[tp.Tuple[str, bool], tp.List[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        loaded = any(name.startswith(pre) for pre in pretrained) and not name.endswith(LORA_KEYS)
        part = "pretrained" if loaded else "new"  # LoRA adapters are new even inside a loaded module
        buckets.setdefault((part, _no_decay(name, p)), []).append(p)
    groups = []
    for (part, no_decay), params in sorted(buckets.items()):
        lr = optim.lr_pretrained if part == "pretrained" else optim.lr
        groups.append({"name": f"{part}{'_no_decay' if no_decay else ''}", "params": params, "lr": lr,
                       "base_lr": lr, "weight_decay": 0.0 if no_decay else optim.weight_decay})
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen (check model.encoder.freeze and optim.freeze)")
    return groups


def build_optimizer(groups: tp.List[tp.Dict[str, tp.Any]], optim: "OptimConfig") -> torch.optim.Optimizer:
    """AdamW or D-Adaptation Adam over ``groups`` (from :func:`param_groups`)."""
    betas = tuple(optim.betas)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=betas, weight_decay=optim.weight_decay, eps=1e-8)
    if optim.optimizer == "dadam":
        try:
            from dadaptation import DAdaptAdam
        except ImportError:  # pragma: no cover - it is in the train extra
            raise ConfigError("optim.optimizer=dadam needs the 'dadaptation' package: pip install dadaptation") from None
        # decouple=True: AdamW-style weight decay, as in the MusicGen recipe
        return DAdaptAdam(groups, lr=optim.lr, betas=betas, weight_decay=optim.weight_decay, decouple=True)
    raise ConfigError(f"optim.optimizer: unknown '{optim.optimizer}' (use one of {', '.join(OPTIMIZERS)})")


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr used by optimiser update number ``step`` (0-based).

    Warm-up is linear and reaches 1 at update ``warmup_steps - 1`` (update 0 already moves: ``1 / warmup``); then a
    half cosine goes from 1 to ``min_lr_ratio`` at ``max_steps`` and stays there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: "OptimConfig") -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine-with-warm-up as a ``LambdaLR`` (stepped once per optimiser update; its state is checkpointed)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim.warmup_steps, optim.max_steps, optim.min_lr_ratio))
