"""Two engines behind one small interface: forward, backward, step, save, load.

- :class:`DeepSpeedEngine`: ZeRO 0-3, bf16, any number of ranks and nodes (the cluster path).
- :class:`TorchEngine`: one process, plain PyTorch (quick CPU experiments and unit tests).

Both take the module to train (:class:`vmas.solvers.step.TrainStep`), a client optimiser and an lr scheduler, and
accumulate ``grad_accum`` micro-batches per optimiser update; ``step()`` returns whether the update happened.
"""
from __future__ import annotations

import contextlib
import typing as tp
from pathlib import Path

import torch
from torch import nn

from vmas.config import Config
from vmas.errors import CheckpointError
from vmas.solvers.distributed import init_deepspeed_distributed
from vmas.solvers.ds_config import deepspeed_config
from vmas.utils import atomic_save, resolve_device


class Engine(tp.Protocol):
    """What the solver needs of an engine."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: tp.Any
    device: tp.Union[str, torch.device]
    grad_norm: float  # of the last optimiser update (after clipping is decided, before it is applied)

    def __call__(self, *args, **kwargs) -> tp.Any: ...  # forward of ``module``

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> bool: ...  # True when this micro-step ended an optimiser update

    def save(self, folder: Path, rank: int) -> None: ...

    def load(self, folder: Path) -> None: ...


class TorchEngine:
    """Single-process stand-in for DeepSpeed's engine (same calls): accumulation, clipping, bf16 autocast."""

    def __init__(self, module: nn.Module, optimizer, scheduler, grad_accum: int, grad_clip: float,
                 precision: str, device: torch.device):
        self.module = module.to(device)
        self.optimizer, self.lr_scheduler = optimizer, scheduler
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.precision, self.device = precision, device
        self.micro_steps = 0
        self.grad_norm = 0.0

    def __call__(self, *args, **kwargs):
        ctx = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
               else contextlib.nullcontext())
        with ctx:
            return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> bool:
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            return False
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.grad_clip > 0:
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def save(self, folder: Path, rank: int) -> None:
        atomic_save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.lr_scheduler.state_dict(), "micro_steps": self.micro_steps},
                    folder / "engine.pt")

    def load(self, folder: Path) -> None:
        from vmas.solvers.checkpoint import load_state_file

        state = load_state_file(folder / "engine.pt", "optimiser state", map_location=self.device)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        _match_state_shapes(self.optimizer)
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = state["micro_steps"]


def _match_state_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Reshape 0-dim moments of [1] parameters to [1] (``step`` counters stay 0-dim, as the optimiser keeps them).

    Checkpoints from before the contrastive temperature became [1] hold 0-dim Adam moments for it, and in-place
    Adam updates need moment and gradient shapes equal; the weight itself is reshaped by
    ``ContrastiveLoss._load_from_state_dict``.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if k != "step" and torch.is_tensor(v) and v.ndim == 0 and p.shape == (1,):
                    state[k] = v.reshape(1)


class DeepSpeedEngine:
    """Thin adapter over ``deepspeed.DeepSpeedEngine`` with the :class:`TorchEngine` interface.

    Needs the process group first (:func:`vmas.solvers.distributed.init_deepspeed_distributed`). Every parameter
    must have at least one dimension: DeepSpeed broadcasts rank 0's weights as byte views, which 0-dim tensors do
    not allow (the contrastive temperature is [1] for this reason).
    """

    def __init__(self, module: nn.Module, optimizer, scheduler, ds_config: tp.Dict[str, tp.Any]):
        import deepspeed

        self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.module = self.engine.module
        self.device = self.engine.device
        self.grad_norm = 0.0

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self.grad_norm = float(norm) if norm is not None else 0.0
        return boundary

    def save(self, folder: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(folder), tag="engine", save_latest=False)

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag="engine", load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"{folder}: DeepSpeed could not load engine/ (saved with another engine?)")
        if self.engine.zero_optimization_partition_weights():
            # ZeRO-3: loading leaves some parameters gathered (status AVAILABLE); the first step then records a
            # fetch trace that later steps do not follow and DeepSpeed stops with "tracing error at step N ...
            # expected the next 2 parameters in the parameter fetch queue" (deepspeedai/DeepSpeed#3599). Release
            # them all so the resumed run starts from the same partitioned state as a fresh one.
            self.engine.empty_partition_cache()


def build_engine(cfg: Config, module: nn.Module, optimizer, scheduler, world_size: int, local_rank: int) -> Engine:
    """``train.engine``: DeepSpeed (sets up the process group first) or the single-process torch engine."""
    if cfg.train.engine == "deepspeed":
        init_deepspeed_distributed(local_rank)
        return DeepSpeedEngine(module, optimizer, scheduler, deepspeed_config(cfg, world_size))
    return TorchEngine(module, optimizer, scheduler, cfg.train.grad_accum, cfg.optim.grad_clip, cfg.train.precision,
                       resolve_device(cfg.train.device))
