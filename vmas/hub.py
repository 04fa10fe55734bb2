"""Named checkpoints, whisper-style: ``available_models()`` and ``load_model(name_or_path)``.

A name maps to a file shipped inside the package (``vmas/assets``), a file the user downloaded into
``$VMAS_CACHE`` (default ``~/.cache/vmas``), or a random-weight debug model built from a preset (for tests and
for ``make demo`` before a trained model exists; it says so when loaded). Anything else is treated as a path to an
inference checkpoint written by ``tools/train.py --export`` (or a training checkpoint directory).

Presets ship inside the package as ``vmas.presets`` (``setup.py`` maps the repository's ``configs/`` there), so a
wheel installed outside the repository builds its preset models too. Layer: above builders (it builds through
them), below generate / cli.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
import typing as tp
from pathlib import Path

from vmas.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

if tp.TYPE_CHECKING:
    from vmas.pipeline import VMASPipeline

ASSETS = Path(__file__).parent / "assets"


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
    description="tiny model (+ tag branch, beat grid, motion condition and its own small codec) trained 1200 steps "
                "on synthetic SynthMV clips on a CPU: its note timing follows the picture's motion, its style the "
                "scene class, tags and --tempo; a demonstration of the pipeline, not real-world music",
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


def preset_path(name: str) -> Path:
    """A config preset shipped with the package (``debug.yaml``, ``paper.yaml``, ...) as a file path.

    Installed (wheel or editable), presets are the package data ``vmas.presets``; in a source tree that was never
    installed they are the repository's ``configs/`` folder.
    """
    try:
        folder = importlib.resources.files("vmas.presets")
    except ModuleNotFoundError:  # a plain source checkout on PYTHONPATH
        folder = Path(__file__).resolve().parent.parent / "configs"
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"preset '{name}' is not shipped with this vmas installation (reinstall the package)")
    return Path(str(path))


UNREAD_BY_GENERATION = ("optim.", "train.", "data.curation.", "data.preprocess.", "data.train_shards",
                        "data.val_shards", "data.unpaired_")
"""Override prefixes that an inference load never reads (issue 36: ``vmas generate --set optim.lr=...`` said nothing)."""


def load_model(name_or_path: tp.Union[str, os.PathLike, None] = None, device: str = "cpu",
               overrides: tp.Sequence[str] = ()) -> "VMASPipeline":
    """Load an inference-ready :class:`vmas.pipeline.VMASPipeline` (EMA weights, eval mode) by name or path.

    ``overrides`` (``key.sub=value``, ``vmas generate --set``) change the model's stored config for this load:
    generation defaults, auto-tagging models (``model.tags.captioner``), ... An override that changes the
    architecture fails as weights that do not fit the config.
    """
    for item in overrides:  # loading reads model.*, data shapes and generation.*; these would look applied
        key = item.split("=", 1)[0].strip()
        if key.startswith(UNREAD_BY_GENERATION):
            log.warning("warning: %s has no effect on generation (a training or data-preparation setting)", key)
    path, entry = resolve(name_or_path or DEFAULT_MODEL)
    if path is None:
        from vmas.config import load_config

        return load_pretrained(None, device=device, config=load_config(preset_path(entry.preset), overrides),
                               random_note=entry.description)
    return load_pretrained(path, device=device, overrides=overrides)


def load_pretrained(path: tp.Union[str, os.PathLike, None], device: str = "cpu", config=None,
                    random_note: str = "", overrides: tp.Sequence[str] = ()) -> "VMASPipeline":
    """Load an inference checkpoint ``{"config", "model", "codec", "meta"}`` (see docs/training.md) or, for a
    folder, its newest ``*.pt``; ``overrides`` (``key.sub=value``) are applied on its stored config.

    ``path=None`` with a ``config`` builds a random-weight model of that config (debug / plumbing only) and says so.
    """
    from vmas.builders import build_codec, build_model, build_pipeline

    if path is None:
        pipe = build_pipeline(config, note=f"WARNING: {random_note or 'random weights'}")
    else:
        from vmas.config import config_from_dict, load_config
        from vmas.loading import load_state_dict_strict

        ckpt, path = _read_checkpoint(Path(path))
        cfg = (load_config(None, overrides, base=ckpt["config"]) if overrides
               else config_from_dict(ckpt["config"], source=str(path)))
        codec = build_codec(cfg.model.codec, load_weights=False)
        if ckpt.get("codec") is not None:
            codec.load_state_dict(ckpt["codec"])
        model = build_model(cfg, codec=codec, load_weights=False)
        load_state_dict_strict(model, ckpt["model"], f"{path}: weights do not fit the config")
        pipe = build_pipeline(cfg, model=model, codec=codec, note=ckpt.get("meta", {}).get("note", ""))
    pipe.model.to(device).eval()
    pipe.codec.to(device).eval()
    return pipe


def _read_checkpoint(path: Path) -> tp.Tuple[dict, Path]:
    """(checkpoint dict, file) with one-line errors for anything that is not an inference checkpoint."""
    from vmas.loading import torch_load

    if path.is_dir():
        candidates = sorted(path.glob("*.pt"))
        if not candidates:
            raise CheckpointError(f"{path}: no .pt checkpoint inside (export one with tools/train.py --export)")
        path = candidates[-1]
    ckpt = torch_load(path, "vmas checkpoint")  # torch's safe unpickler: a downloaded file cannot run code
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a vmas inference checkpoint (expected keys config/model/codec; "
                              "export one with tools/train.py --export)")
    return ckpt, path
