"""Tiny helpers shared across the package (kept in one place on purpose)."""
from __future__ import annotations

import os
import random
import typing as tp

import numpy as np
import torch

T = tp.TypeVar("T")


def exists(x: tp.Any) -> bool:
    return x is not None


def default(x: tp.Optional[T], d: T) -> T:
    return x if x is not None else d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_tensor(x: tp.Any, dtype: tp.Optional[torch.dtype] = None) -> torch.Tensor:
    """Accept numpy arrays, lists or tensors (public functions take either)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def atomic_save(obj: tp.Any, path: tp.Union[str, os.PathLike]) -> None:
    """torch.save to a temp file then rename: a kill mid-save never corrupts ``path``."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)
