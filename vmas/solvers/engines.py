"""Two engines behind one small interface: forward, backward, step, save, load.

- :class:`DeepSpeedEngine`: ZeRO 0-3, bf16, any number of ranks and nodes (the cluster path).
- :class:`TorchEngine`: one process, plain PyTorch (quick CPU experiments and unit tests).

Both take the module to train (:class:`vmas.solvers.step.TrainStep`), a client optimiser and an lr scheduler, and
accumulate ``grad_accum`` micro-batches per optimiser update; ``step()`` returns whether the update happened.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import typing as tp
from pathlib import Path

import torch
from torch import nn

from vmas.config import Config
from vmas.errors import CheckpointError
from vmas.solvers.distributed import init_deepspeed_distributed
from vmas.solvers.ds_config import deepspeed_config
from vmas.utils import atomic_save, resolve_device

logger = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------------------ optimiser kernels
@dataclasses.dataclass(frozen=True)
class AdamChoice:
    """Which Adam(W) implementation runs the update, and why (the start-up log line)."""

    impl: str  # one of ADAM_IMPLS
    reason: str


ADAM_IMPLS = ("deepspeed.FusedAdam", "deepspeed.DeepSpeedCPUAdam", "torch.AdamW(fused)", "torch.AdamW")


def deepspeed_op_compatible(builder: str) -> bool:
    """Whether DeepSpeed's op ``builder`` (``FusedAdamBuilder``, ``CPUAdamBuilder``) is pre-built or can be built
    here (its accelerator's builder reports a usable toolchain). False when DeepSpeed is missing or cannot tell."""
    try:
        from deepspeed.accelerator import get_accelerator

        op = get_accelerator().create_op_builder(builder)
        return op is not None and bool(op.is_compatible(verbose=False))
    except Exception:  # noqa: BLE001 - no DeepSpeed, no accelerator, a toolchain probe that throws: not usable
        return False


def choose_adam(engine: str, device_type: str, offload: str = "none",
                op_compatible: tp.Callable[[str], bool] = deepspeed_op_compatible) -> AdamChoice:
    """The one rule for the AdamW kernel (same maths and hyper-parameters in every case; speed and memory differ):

    - DeepSpeed with ZeRO-Offload (optimiser state on the CPU): ``DeepSpeedCPUAdam`` (vectorised C++ Adam, what
      DeepSpeed expects there) when its op can build, else torch's AdamW on the CPU;
    - on CUDA: DeepSpeed's ``FusedAdam`` (multi-tensor CUDA kernel) under the DeepSpeed engine when its op can build,
      else torch's ``AdamW(fused=True)`` (one fused CUDA kernel for all parameters);
    - on the CPU: torch's AdamW as built (foreach), the numbers every CPU test was written against.
    """
    if engine == "deepspeed" and offload in ("cpu", "nvme"):
        if op_compatible("CPUAdamBuilder"):
            return AdamChoice("deepspeed.DeepSpeedCPUAdam", f"ZeRO-Offload to {offload}: DeepSpeed's CPU Adam op")
        return AdamChoice("torch.AdamW", f"ZeRO-Offload to {offload}, but DeepSpeed's CPUAdam op cannot build here")
    if device_type == "cuda":
        if engine == "deepspeed" and op_compatible("FusedAdamBuilder"):
            return AdamChoice("deepspeed.FusedAdam", "CUDA, DeepSpeed's FusedAdam op is available")
        why = "the torch engine" if engine != "deepspeed" else "DeepSpeed's FusedAdam op cannot build here"
        return AdamChoice("torch.AdamW(fused)", f"CUDA, {why}")
    return AdamChoice("torch.AdamW", f"{device_type}: torch's AdamW (foreach)")


def _engine_device_type(cfg: Config) -> str:
    if cfg.train.engine == "deepspeed":  # DeepSpeed runs on its accelerator: CUDA when there is one
        return "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_device(cfg.train.device).type


def _offload(ds: tp.Mapping[str, tp.Any]) -> str:
    return str(ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none"))


def _adam(impl: str, groups: tp.List[tp.Dict[str, tp.Any]], optimizer: torch.optim.Optimizer
          ) -> torch.optim.Optimizer:
    d = optimizer.defaults
    hp = dict(lr=d["lr"], betas=d["betas"], eps=d["eps"], weight_decay=d["weight_decay"])
    if impl == "deepspeed.FusedAdam":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, adam_w_mode=True, **hp)
    if impl == "deepspeed.DeepSpeedCPUAdam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **hp)
    return torch.optim.AdamW(groups, fused=True, **hp)


def select_optimizer(cfg: Config, optimizer: torch.optim.Optimizer, scheduler: tp.Any,
                     ds: tp.Optional[tp.Dict[str, tp.Any]] = None,
                     op_compatible: tp.Callable[[str], bool] = deepspeed_op_compatible
                     ) -> tp.Tuple[torch.optim.Optimizer, tp.Any, AdamChoice]:
    """The optimiser and scheduler the engine runs: ``optimizer`` (torch AdamW from
    :func:`vmas.solvers.optim.build_optimizer`) rebuilt as the kernel :func:`choose_adam` picks, over the same
    parameter groups (lr, weight decay, names), with its ``LambdaLR`` rebuilt on the same factors; logged in one
    line at start-up. Chosen here because the engine is where the device and DeepSpeed's offload are known.

    D-Adaptation and plain CPU runs keep the objects as given. A kernel that fails to build when constructed (a
    JIT compile that breaks despite a compatible toolchain) falls back to torch's AdamW (fused on CUDA). With
    ZeRO-Offload and torch's AdamW, ``ds`` gets ``zero_force_ds_cpu_optimizer: false`` (DeepSpeed refuses a
    non-DeepSpeed CPU optimiser otherwise).
    """
    if cfg.optim.optimizer != "adamw" or not isinstance(optimizer, torch.optim.AdamW):
        return optimizer, scheduler, AdamChoice("as built", f"optim.optimizer={cfg.optim.optimizer}")
    device_type = _engine_device_type(cfg)
    offload = _offload(ds or {}) if cfg.train.engine == "deepspeed" else "none"
    choice = choose_adam(cfg.train.engine, device_type, offload, op_compatible)
    if choice.impl == "torch.AdamW":
        if offload != "none" and ds is not None:
            ds["zero_force_ds_cpu_optimizer"] = False
        logger.info("optimiser: torch.AdamW (%s)", choice.reason)
        return optimizer, scheduler, choice
    keep = ("params", "lr", "weight_decay", "name", "base_lr", "initial_lr")
    groups = [{k: v for k, v in g.items() if k in keep} for g in optimizer.param_groups]
    try:
        new = _adam(choice.impl, groups, optimizer)
    except Exception as err:  # noqa: BLE001 - an op that does not build: the torch kernel is always there
        if choice.impl == "torch.AdamW(fused)":
            raise
        failed = f"{choice.impl} failed to build ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        if offload != "none":
            choice = AdamChoice("torch.AdamW", failed)
            if ds is not None:
                ds["zero_force_ds_cpu_optimizer"] = False
            logger.info("optimiser: torch.AdamW (%s)", choice.reason)
            return optimizer, scheduler, choice
        choice = AdamChoice("torch.AdamW(fused)", failed)
        new = _adam(choice.impl, groups, optimizer)
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler = torch.optim.lr_scheduler.LambdaLR(new, scheduler.lr_lambdas)
    logger.info("optimiser: %s (%s)", choice.impl, choice.reason)
    return new, scheduler, choice


def build_engine(cfg: Config, module: nn.Module, optimizer, scheduler, world_size: int, local_rank: int) -> Engine:
    """``train.engine``: DeepSpeed (sets up the process group first) or the single-process torch engine; the
    optimiser kernel is chosen here (:func:`select_optimizer`)."""
    engine: tp.Any
    if cfg.train.engine == "deepspeed":
        init_deepspeed_distributed(local_rank)
        ds = deepspeed_config(cfg, world_size)
        optimizer, scheduler, choice = select_optimizer(cfg, optimizer, scheduler, ds)
        engine = DeepSpeedEngine(module, optimizer, scheduler, ds)
    else:
        optimizer, scheduler, choice = select_optimizer(cfg, optimizer, scheduler)
        engine = TorchEngine(module, optimizer, scheduler, cfg.train.grad_accum, cfg.optim.grad_clip,
                             cfg.train.precision, resolve_device(cfg.train.device))
    engine.optimizer_choice = choice  # what ran the update, for reports (tools/gpu_check.py)
    return engine
