"""The training objects of a config, built once for the solver and for the memory estimator (issue 33).

``vmas.builders`` turns config into every model, codec and loss; the training step (:class:`TrainStep`) and the
optimiser with its parameter groups, freezing and LoRA live in this package (layer 7), and ``builders`` (layer 6)
may not import them. So their assembly is this one function in ``solvers``, over the builders: the solver
(:class:`vmas.solvers.solver.Solver`) trains exactly what the memory estimator (``vmas.solvers.memory``) and the
device check (``tools/gpu_check.py``) measure, because all three call it.
"""
from __future__ import annotations

import dataclasses
import typing as tp

import torch

from vmas.builders import build_model, build_objective
from vmas.config import Config
from vmas.solvers.lora import apply_lora
from vmas.solvers.optim import apply_freeze, build_optimizer, param_groups, pretrained_prefixes
from vmas.solvers.step import TrainStep


@dataclasses.dataclass
class TrainingObjects:
    """What one run trains: the model, the step module wrapping it with the objective, and the optimiser."""

    model: torch.nn.Module
    step: TrainStep
    optimizer: torch.optim.Optimizer
    param_summary: tp.Dict[str, int]
    """Parameters per optimiser group (name -> count), for the start-up log."""
    frozen_params: int
    """Parameters with ``requires_grad=False`` (``optim.freeze``, LoRA's frozen base)."""


def build_training_objects(cfg: Config, codec: torch.nn.Module, model: tp.Optional[torch.nn.Module] = None,
                           load_weights: bool = True) -> TrainingObjects:
    """Model (``model`` as given, else :func:`vmas.builders.build_model`), fine-tuning weights
    (``train.init_from``, only with ``load_weights``), ``optim.freeze``, LoRA adapters, parameter groups, optimiser
    and :class:`TrainStep` with :func:`vmas.builders.build_objective`, in the order training needs them (LoRA
    before the groups: the adapters are trained parameters).

    ``load_weights=False``: random weights throughout (the estimator measures shapes, not values).
    """
    if model is None:
        model = build_model(cfg, codec=codec, load_weights=load_weights)
    if cfg.train.init_from and load_weights:  # fine-tuning: the weights of an export or checkpoint
        from vmas.solvers.export import load_init_weights

        load_init_weights(model, cfg.train.init_from)
    if cfg.optim.freeze:
        apply_freeze(model, cfg.optim.freeze)
    if cfg.optim.lora_rank:
        apply_lora(model, cfg.optim.lora_targets, cfg.optim.lora_rank, cfg.optim.lora_alpha)
    groups = param_groups(model, cfg.optim, pretrained_prefixes(cfg))
    summary = {g["name"]: sum(p.numel() for p in g["params"]) for g in groups}
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    optimizer = build_optimizer(groups, cfg.optim)
    return TrainingObjects(model=model, step=TrainStep(model, build_objective(cfg)), optimizer=optimizer,
                           param_summary=summary, frozen_params=frozen)
