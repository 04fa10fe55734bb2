"""The DeepSpeed JSON of a run: the user's file (bucket sizes, offload, ...) with every field that this config
owns filled in, so batch size, accumulation, clipping and precision have one source of truth."""
from __future__ import annotations

import json
import typing as tp
from pathlib import Path

from vmas.config import Config
from vmas.errors import ConfigError


def deepspeed_config(cfg: Config, world_size: int) -> tp.Dict[str, tp.Any]:
    """The DeepSpeed JSON: ``train.deepspeed_config`` (if any) with batch, precision, clip and stage filled in."""
    t = cfg.train
    ds: tp.Dict[str, tp.Any] = {}
    if t.deepspeed_config:
        try:
            ds = json.loads(Path(t.deepspeed_config).read_text())
        except ValueError as err:
            raise ConfigError(f"{t.deepspeed_config}: not valid JSON ({err})") from None
    zero = ds.setdefault("zero_optimization", {})
    if "stage" in zero and zero["stage"] != t.zero_stage:
        raise ConfigError(f"{t.deepspeed_config} sets ZeRO stage {zero['stage']} but train.zero_stage={t.zero_stage}: "
                          "make them agree")
    zero["stage"] = t.zero_stage
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["train_batch_size"] = cfg.data.batch_size * t.grad_accum * world_size
    ds["gradient_clipping"] = cfg.optim.grad_clip
    ds["bf16"] = {"enabled": t.precision == "bf16"}
    ds.pop("fp16", None)
    ds.pop("optimizer", None)  # ours is a client optimiser (param groups, D-Adaptation), see vmas.solvers.optim
    ds.pop("scheduler", None)
    ds["zero_allow_untested_optimizer"] = True
    ds.setdefault("steps_per_print", 10**9)  # our own logging
    ds.setdefault("wall_clock_breakdown", False)
    return ds
