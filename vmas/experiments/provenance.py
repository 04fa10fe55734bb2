"""The ``meta`` block every committed result JSON carries: where, when and from what its numbers came.

A number in ``docs/results/`` must reproduce, so its meta names the commit (and whether the tree had uncommitted
changes: such numbers are not publishable), the machine and its load, and for every codec the run used its
training steps and a hash of its weights. Issue 36 found a codec trained to a wall-clock budget reaching 700 steps
on a loaded machine instead of 1650, moving the downstream onset F1 from 0.64 to 0.44: with the steps and the
hash in the meta, such a difference is visible in the JSON itself.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
import typing as tp
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "docs/results"  # the published result JSONs (not code: see git_state)


def weights_sha256(state_dict: tp.Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (not of the file: a file also holds metrics and
    timings that differ between two saves of the same weights)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def codec_record(path: tp.Union[str, os.PathLike]) -> tp.Dict[str, tp.Any]:
    """``{"path", "steps", "budget", "weights_sha256"}`` of a codec file written by ``tools/train_codec.py``.

    ``steps`` is what the trainer recorded (None for files from before it did); ``budget`` says whether those steps
    were pinned (``"steps"``) or cut by a wall clock (``"minutes"``).
    """
    from vmas.models.codec import _torch_load

    pkg = _torch_load(Path(path))
    metrics = pkg.get("metrics") or {}
    return {"path": os.fspath(path), "steps": metrics.get("steps"), "budget": metrics.get("budget"),
            "weights_sha256": weights_sha256(pkg["state_dict"])}


def git_state(root: tp.Union[str, os.PathLike] = ROOT) -> tp.Tuple[str, bool]:
    """(full commit, dirty) of the checkout at ``root``; ``("unknown", False)`` outside a git checkout.

    Dirty means tracked files differ from the commit: the commit then does not say which code made the numbers.
    Published results (``docs/results/``) do not count: they are what the code makes, and a chain of benchmarks
    writing them one after the other (``make synthmv-irregular-bench``) would otherwise mark every result after the
    first as dirty.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     f":(exclude){RESULTS}"], cwd=root, capture_output=True, text=True,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, dirty


def provenance(codecs: tp.Optional[tp.Mapping[str, tp.Union[str, os.PathLike]]] = None,
               root: tp.Union[str, os.PathLike] = ROOT) -> tp.Dict[str, tp.Any]:
    """Commit, clean-tree flag, date, machine and load of a benchmark run, plus a :func:`codec_record` per named
    codec file (e.g. ``{"codec": "runs/synthmv/codec.pt"}``), for the result JSON's ``meta``."""
    commit, dirty = git_state(root)
    meta: tp.Dict[str, tp.Any] = {
        "commit": commit, "dirty_tree": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    for name, path in (codecs or {}).items():
        meta[name] = codec_record(path) if path and Path(path).is_file() else {"path": os.fspath(path or ""),
                                                                                "missing": True}
    return meta


def refuse_dirty(meta: tp.Mapping[str, tp.Any], allow: bool) -> tp.Optional[str]:
    """The one-line reason a result must not be published from this tree, or None.

    Benchmarks call it before writing a result meant for ``docs/results/``; ``--allow-dirty`` (tests, drafts)
    keeps the JSON but it stays marked ``dirty_tree: true``.
    """
    if meta.get("dirty_tree") and not allow:
        return ("the working tree has uncommitted changes, so the commit in this result would not name the code "
                "that made it: commit first (or pass --allow-dirty for a draft that is not published)")
    return None
