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
from vmas.solvers.checkpoint import export_inference, read_meta


def export_ema(path: tp.Union[str, Path], cfg: Config, ema_state: tp.Mapping[str, tp.Any],
               codec_state: tp.Optional[tp.Mapping[str, torch.Tensor]], step: int) -> Path:
    """Write the inference checkpoint from an EMA state (``EMA.state_dict()``: shadow, decay, every, num_updates).

    The EMA tracks the VMAS model itself; an engine-wrapped ``model.`` prefix is accepted and dropped.
    """
    prefix = "model."
    weights = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in ema_state["shadow"].items()}
    meta = {"step": step, "ema_decay": ema_state["decay"], "ema_every": ema_state["every"],
            "ema_updates": ema_state["num_updates"], "note": f"{cfg.name} step {step} (EMA weights)"}
    return export_inference(path, config_to_dict(cfg), weights, codec_state, meta)


def export_checkpoint(cfg: Config, folder: tp.Union[str, Path], out: tp.Union[str, Path]) -> Path:
    """Inference export of a training checkpoint folder (reads ``ema.pt`` and ``meta.json``; no engine)."""
    folder = Path(folder)
    meta = read_meta(folder)
    ema = torch.load(folder / "ema.pt", map_location="cpu", weights_only=False)
    codec = build_codec(cfg.model.codec)
    return export_ema(out, cfg, ema, codec.state_dict(), meta["step"])
