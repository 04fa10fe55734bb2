"""Training checkpoints (atomic, keep-last-K, full resume) and the one-file inference export format.

Layout of a run folder (``train.out_dir``)::

    checkpoints/step_00001000/      one complete checkpoint (never modified once renamed into place)
        engine/ or engine.pt        model + optimiser + scheduler (DeepSpeed's own files, or one torch file)
        ema.pt                      EMA shadow weights (rank 0; identical on every rank)
        rank_00000.pt ...           per rank: data position and RNG states (torch, cuda, numpy, python)
        meta.json                   step, world size, config; written last
    checkpoints/.tmp_step_*/        a save in progress (or killed): ignored and deleted on the next start
    model.pt                        inference export (see :func:`export_inference`)

Atomicity: every rank writes into ``.tmp_step_N``; after a barrier rank 0 renames the folder to ``step_N``
(``os.replace`` of a directory is atomic on POSIX filesystems). A kill at any moment leaves either the previous
complete checkpoints or the new complete one, never a half-written ``step_N``. Only then are old ones pruned.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import typing as tp
from pathlib import Path

import numpy as np
import torch

from vmas.errors import CheckpointError, ConfigError
from vmas.solvers.distributed import barrier
from vmas.utils import atomic_save

STEP_RE = re.compile(r"^step_(\d{8})$")
EXPORT_VERSION = 1


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: tp.Union[str, Path]) -> tp.List[Path]:
    """Complete checkpoints under ``root`` (``out_dir/checkpoints``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest_checkpoint(root: tp.Union[str, Path]) -> tp.Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def clean_partial(root: tp.Union[str, Path]) -> tp.List[Path]:
    """Delete leftovers of interrupted saves (``.tmp_step_*``); returns what was removed (rank 0 only)."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.glob(".tmp_step_*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def prune(root: tp.Union[str, Path], keep_last: int) -> tp.List[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (``keep_last <= 0`` keeps everything)."""
    found = list_checkpoints(root)
    old = found[:-keep_last] if keep_last > 0 else []
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


# --------------------------------------------------------------------------------------------------- RNG
def rng_state() -> tp.Dict[str, tp.Any]:
    """Every generator's state as plain data and tensors, so the file loads with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                        int(has_gauss), float(cached)),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: tp.Mapping[str, tp.Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rank_state(folder: Path, rank: int, data_state: tp.Mapping[str, tp.Any]) -> None:
    atomic_save({"rng": rng_state(), "data": dict(data_state)}, folder / f"rank_{rank:05d}.pt")


def load_rank_state(folder: Path, rank: int) -> tp.Dict[str, tp.Any]:
    path = folder / f"rank_{rank:05d}.pt"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no state for rank {rank} (resume with the world size it was saved with, "
                              "see meta.json)")
    return load_state_file(path, "training state")


def load_state_file(path: Path, what: str, map_location: tp.Any = "cpu") -> tp.Any:
    """A training-state file through torch's safe unpickler (tensors and plain data only), like every other file
    vmas reads: a state that names any other class is refused in one line. Files from before rng states were
    saved as tensors hold a numpy array; numpy's array-rebuilding functions (which build arrays, nothing else) are
    allowed for them."""
    from numpy._core.multiarray import _reconstruct

    legacy = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct,
              (_reconstruct, "numpy.core.multiarray._reconstruct")]  # the name numpy < 2 pickled it under
    try:
        with torch.serialization.safe_globals(legacy):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
        why = (f"it pickles '{found.group(1)}', which could run code when loaded" if found else
               f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:120]}")
        if isinstance(err, FileNotFoundError):
            raise CheckpointError(f"{path}: missing ({what}); resume from a complete checkpoint folder") from None
        raise CheckpointError(f"{path}: refused to load this {what} ({why}); resume from another checkpoint or "
                              "start the run again") from None


def write_meta(folder: Path, meta: tp.Mapping[str, tp.Any]) -> None:
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, folder / "meta.json")


def read_meta(folder: Path) -> tp.Dict[str, tp.Any]:
    try:
        return json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: not a complete training checkpoint ({err})") from None


def commit(tmp: Path, final: Path) -> None:
    """Move a finished ``.tmp_step_N`` into place (rank 0, after every rank wrote its part)."""
    if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)


# --------------------------------------------------------------------------------------------------- orchestration
class Stateful(tp.Protocol):
    def state_dict(self) -> tp.Dict[str, tp.Any]: ...

    def load_state_dict(self, state: tp.Mapping[str, tp.Any]) -> None: ...


def resolve_resume(resume: tp.Union[bool, str, os.PathLike], root: Path) -> tp.Optional[Path]:
    """``--resume`` -> the checkpoint folder to continue from (None = fresh start).

    ``True``/``"auto"`` = newest complete checkpoint under ``root`` (fresh start if none); a path = that folder;
    ``False`` = fresh start, refused when ``root`` already holds checkpoints (a second run would mix into them).
    """
    if isinstance(resume, (str, os.PathLike)) and str(resume) not in ("", "auto"):
        folder = Path(resume)
        if not (folder / "meta.json").is_file():
            raise CheckpointError(f"--resume {folder}: not a complete checkpoint folder (expected "
                                  f"{root}/step_XXXXXXXX with meta.json)")
        return folder
    if resume:
        return latest_checkpoint(root)
    if list_checkpoints(root):
        raise ConfigError(f"{root.parent} already has checkpoints: pass --resume to continue it, or choose another "
                          "train.out_dir")
    return None


def save_checkpoint(root: Path, step: int, rank: int, engine: tp.Any, ema: Stateful, data: Stateful,
                    meta: tp.Mapping[str, tp.Any], keep_last: int) -> Path:
    """Write ``root/step_N`` atomically; every rank calls this (each writes its engine shard and data/RNG state).

    ``engine`` has ``save(folder, rank)`` (:mod:`vmas.solvers.engines`); ``meta`` (step, world size, engine,
    config, ...) is written last by rank 0, which then commits the folder and prunes to ``keep_last``.
    """
    final = root / step_dir_name(step)
    tmp = root / f".tmp_{final.name}"
    main = rank == 0
    if main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    engine.save(tmp, rank)
    save_rank_state(tmp, rank, data.state_dict())
    barrier()
    if main:
        atomic_save(ema.state_dict(), tmp / "ema.pt")
        write_meta(tmp, meta)
        commit(tmp, final)
        prune(root, keep_last)
    barrier()
    return final


def load_checkpoint(folder: Path, rank: int, world_size: int, engine_name: str, engine: tp.Any, ema: Stateful,
                    data: Stateful) -> tp.Dict[str, tp.Any]:
    """Restore engine (model, optimiser, scheduler), EMA, data position and RNG states; returns ``meta``.

    The layout must match the one that wrote it (same engine, same number of ranks): the engine files and the
    per-rank data positions cannot be re-split.
    """
    meta = read_meta(folder)
    if meta.get("engine") != engine_name:
        raise CheckpointError(f"{folder} was written by train.engine={meta.get('engine')}, this run uses "
                              f"{engine_name}: resume with the same engine")
    if meta["world_size"] != world_size:
        raise CheckpointError(f"{folder} was written by {meta['world_size']} ranks, this run has {world_size}: "
                              "resume with the same number of processes")
    engine.load(folder)
    ema.load_state_dict(load_state_file(folder / "ema.pt", "EMA state"))
    state = load_rank_state(folder, rank)
    data.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    return meta


# --------------------------------------------------------------------------------------------------- export
def export_inference(path: tp.Union[str, Path], config: tp.Mapping[str, tp.Any], model_state: tp.Mapping[str, torch.Tensor],
                     codec_state: tp.Optional[tp.Mapping[str, torch.Tensor]], meta: tp.Mapping[str, tp.Any]) -> Path:
    """Write the one-file inference checkpoint that ``vmas.hub.load_model(path)`` and ``vmas`` CLI load.

    Format (a ``torch.save`` dict; agreed with ``vmas.hub.load_pretrained``, see docs/training.md)::

        {"config": config_to_dict(cfg),          # full Config as plain dict (model sizes, generation defaults)
         "model":  {name: tensor},               # VMAS.state_dict() keys, EMA weights (float32)
         "codec":  {name: tensor} | None,        # Codec.state_dict() (the frozen tokenizer used in training)
         "meta":   {"step", "format_version", "note", "ema_decay", "ema_every", ...}}

    Written atomically (temp file + rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": EXPORT_VERSION, **dict(meta)}
    atomic_save({"config": dict(config), "model": dict(model_state),
                 "codec": dict(codec_state) if codec_state is not None else None, "meta": meta}, path)
    return path
