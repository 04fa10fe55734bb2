"""The inference export of a run: EMA weights + config + codec in one file (``vmas.hub.load_model`` reads it).

One implementation for both ways in: the end of training (:meth:`vmas.solvers.solver.Solver.export`, from the live
EMA) and ``tools/train.py --export CKPT_DIR`` (:func:`export_checkpoint`, from a training checkpoint's ``ema.pt``,
without DeepSpeed or the training model).
"""
from __future__ import annotations

import typing as tp
from pathlib import Path

import torch

from vmas.builders import build_codec
from vmas.config import Config, config_to_dict
from vmas.errors import CheckpointError
from vmas.loading import torch_load
from vmas.solvers.checkpoint import export_inference, read_meta
from vmas.solvers.lora import merge_lora


def export_ema(path: tp.Union[str, Path], cfg: Config, ema_state: tp.Mapping[str, tp.Any],
               codec_state: tp.Optional[tp.Mapping[str, torch.Tensor]], step: int) -> Path:
    """Write the inference checkpoint from an EMA state (``EMA.state_dict()``: shadow, decay, every, num_updates).

    The EMA tracks the VMAS model itself; an engine-wrapped ``model.`` prefix is accepted and dropped.
    """
    prefix = "model."
    weights = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in ema_state["shadow"].items()}
    if cfg.optim.lora_rank:  # fine-tuned with adapters: fold them into the weights (a plain VMAS state dict)
        weights = merge_lora(weights, cfg.optim.lora_alpha / cfg.optim.lora_rank)
    meta = {"step": step, "ema_decay": ema_state["decay"], "ema_every": ema_state["every"],
            "ema_updates": ema_state["num_updates"], "note": f"{cfg.name} step {step} (EMA weights)"}
    return export_inference(path, config_to_dict(cfg), weights, codec_state, meta)


def export_checkpoint(cfg: Config, folder: tp.Union[str, Path], out: tp.Union[str, Path]) -> Path:
    """Inference export of a training checkpoint folder (reads ``ema.pt`` and ``meta.json``; no engine)."""
    folder = Path(folder)
    meta = read_meta(folder)
    ema = torch_load(folder / "ema.pt", "EMA checkpoint")
    codec = build_codec(cfg.model.codec)
    return export_ema(out, cfg, ema, codec.state_dict(), meta["step"])


def load_init_weights(model: torch.nn.Module, source: tp.Union[str, Path]) -> None:
    """``train.init_from``: load an inference export (``model.pt``: its EMA weights) or a training checkpoint folder
    (its ``ema.pt``) into ``model``, strictly (the fine-tuning config must describe the same architecture)."""
    path = Path(source)
    if path.is_dir():
        if not (path / "ema.pt").is_file():
            raise CheckpointError(f"train.init_from={path}: no ema.pt (expected a training checkpoint folder "
                                  "checkpoints/step_XXXXXXXX or an exported model.pt)")
        state = torch_load(path / "ema.pt", "EMA checkpoint")["shadow"]
    elif path.is_file():
        blob = torch_load(path, "vmas export")  # a downloaded file: the safe unpickler only
        if not isinstance(blob, dict) or "model" not in blob:
            raise CheckpointError(f"train.init_from={path}: not a vmas export (no 'model' entry; see docs/training.md)")
        state = blob["model"]
    else:
        raise CheckpointError(f"train.init_from={path}: no such file or folder")
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    # same element count is fine (old exports keep a 0-dim temperature; the module reshapes it when loading)
    shapes = [k for k in set(own) & set(state) if own[k].numel() != state[k].numel()]
    if missing or unexpected or shapes:
        raise CheckpointError(f"train.init_from={path} does not fit model.* of this config (missing {missing[:2]}, "
                              f"unexpected {unexpected[:2]}, shape differs {shapes[:2]}): use the base model's "
                              "model section")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})  # strict


def stored_config(source: tp.Union[str, Path]) -> tp.Dict[str, tp.Any]:
    """The config dict stored with an export (``model.pt``) or a training checkpoint folder (``meta.json``): the
    layer a fine-tuning preset sits on, so ``model.*``, the data shapes and the generation defaults are the base
    model's own (``tools/train.py`` with ``train.init_from``)."""
    path = Path(source)
    if path.is_dir():
        return dict(read_meta(path)["config"])
    if not path.is_file():
        raise CheckpointError(f"train.init_from={path}: no such file or folder")
    blob = torch_load(path, "vmas export")
    if not isinstance(blob, dict) or "config" not in blob:
        raise CheckpointError(f"train.init_from={path}: not a vmas export (no 'config' entry)")
    return dict(blob["config"])


def init_codec(cfg: Config) -> torch.nn.Module:
    """The codec of a fine-tuning run: the one stored in the ``train.init_from`` export when it has one (the
    tokenizer the base model was trained with, whatever ``model.codec.pretrained`` points to on this machine),
    else ``build_codec(cfg.model.codec)``."""
    import dataclasses

    path = Path(cfg.train.init_from)
    blob = torch_load(path, "vmas export") if path.is_file() else {}
    if not blob.get("codec"):
        return build_codec(cfg.model.codec)
    codec = build_codec(dataclasses.replace(cfg.model.codec, pretrained=""))
    codec.load_state_dict(blob["codec"])
    return codec
