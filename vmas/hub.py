"""Named checkpoints, whisper-style: ``available_models()`` and ``load_model(name_or_path)``.

A name maps to a file shipped inside the package (``vmas/assets``), a file the user downloaded into
``$VMAS_CACHE`` (default ``~/.cache/vmas``), or a random-weight debug model built from a preset (for tests and
for ``make demo`` before a trained model exists; it says so when loaded). Anything else is treated as a path to an
inference checkpoint written by ``tools/train.py --export`` (or a training checkpoint directory).
"""
from __future__ import annotations

import dataclasses
import os
import typing as tp
from pathlib import Path

from vmas.errors import CheckpointError

ASSETS = Path(__file__).parent / "assets"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    filename: str = ""
    """File name inside vmas/assets or the cache folder; empty for preset-built random models."""
    preset: str = ""
    """Config preset used to build a random-weight model (debug only)."""
    url: str = ""
    """Where users with the internet can download the file, if published."""


_MODELS: tp.Dict[str, ModelEntry] = {}
DEFAULT_MODEL = "vmas-debug-random"


def register_model(entry: ModelEntry, default: bool = False) -> None:
    global DEFAULT_MODEL
    _MODELS[entry.name] = entry
    if default:
        DEFAULT_MODEL = entry.name


register_model(ModelEntry(
    name="vmas-debug-random",
    description="debug-size model with RANDOM weights (noise-like music); for tests and plumbing checks only",
    preset="debug.yaml",
))


register_model(ModelEntry(
    name="vmas-synthmv-demo",
    description="tiny model (+ tag branch and its own small codec) trained 1200 steps on synthetic SynthMV clips on "
                "a CPU: follows the scene class of the picture, tags and --tempo, not yet the picture's note timing; a "
                "demonstration of the pipeline, not real-world music",
    filename="vmas-synthmv-demo.pt",
), default=(ASSETS / "vmas-synthmv-demo.pt").exists())


def cache_dir() -> Path:
    return Path(os.environ.get("VMAS_CACHE", Path.home() / ".cache" / "vmas"))


def available_models() -> tp.List[str]:
    """Names accepted by :func:`load_model` (a path to a checkpoint is accepted too)."""
    return sorted(_MODELS)


def resolve(name_or_path: tp.Union[str, os.PathLike]) -> tp.Tuple[tp.Optional[Path], tp.Optional[ModelEntry]]:
    """Return (checkpoint path or None for preset models, registry entry or None for plain paths)."""
    key = os.fspath(name_or_path)
    if key in _MODELS:
        entry = _MODELS[key]
        if not entry.filename:
            return None, entry
        for folder in (ASSETS, cache_dir()):
            if (folder / entry.filename).exists():
                return folder / entry.filename, entry
        where = f"download it from {entry.url} and " if entry.url else ""
        raise CheckpointError(
            f"model '{key}' is not available locally: {where}put {entry.filename} in {cache_dir()} (or set VMAS_CACHE)")
    path = Path(key).expanduser()
    if path.exists():
        return path, None
    raise CheckpointError(
        f"unknown model '{key}': not a registered name ({', '.join(available_models())}) and no such file")


def load_model(name_or_path: tp.Union[str, os.PathLike, None] = None, device: str = "cpu"):
    """Load an inference-ready :class:`vmas.models.vmas.VMAS` (EMA weights, eval mode) with its codec and config."""
    from vmas.models.vmas import load_pretrained  # local import: keeps `import vmas` light

    path, entry = resolve(name_or_path or DEFAULT_MODEL)
    if path is None:
        from vmas.config import load_config

        return load_pretrained(None, device=device, config=load_config(CONFIGS / entry.preset), random_note=entry.description)
    return load_pretrained(path, device=device)
