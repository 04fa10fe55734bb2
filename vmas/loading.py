"""Reading weights from disk and from the Hugging Face cache: one place for the three things every loader does.

- :func:`torch_load`: ``torch.load`` on the CPU with torch's safe (``weights_only``) unpickler, always: a downloaded
  file cannot run code. audiocraft files pickle an omegaconf config beside the weights, so ``lenient=True`` reads
  an explicit allow-list of such classes (:data:`STUBBED_GLOBALS`) into inert placeholders; anything else is refused.
- :func:`load_state_dict_strict`: every key must match; a mismatch is one :class:`CheckpointError` line naming the
  first missing/unexpected keys (or the first shape mismatch) instead of torch's multi-page RuntimeError.
- :func:`hf_pretrained`: ``cls.from_pretrained`` from the local cache or a folder (the hub is offline here); a
  missing model is one line saying what to download and where to point the config.
- :func:`resolve_pretrained` / :func:`offline_if_unreachable`: decide *before* any hub request whether a name can
  load. Without ``HF_HUB_OFFLINE`` the Hugging Face client retries an unreachable hub for 25-50 s per file before
  failing (issue 36); here a missing local path fails at once, an uncached hub name costs one connection attempt,
  and an unreachable hub switches the process to offline mode (said once, on the log).

Why one place: these used to be written four times with different error texts and different fallbacks (one codec
file read with the safe unpickler, the same file read by the LM loader with the lenient one). This module sits at
the bottom of the package (it imports only :mod:`vmas.errors`), so models, metrics, tags and data can all use it.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import typing as tp
from pathlib import Path

import torch

from vmas.errors import CheckpointError

log = logging.getLogger(__name__)

STUBBED_GLOBALS = ("omegaconf.", "typing.Any")
"""The explicit allow-list of foreign classes a checkpoint may pickle besides tensors and plain containers
(:func:`torch_load` with ``lenient=True``): audiocraft pickles its omegaconf config (and the ``typing.Any`` inside
it) beside the weights. Names starting with one of these are read into inert :class:`_Placeholder` objects; their
code (and omegaconf itself) is never imported or run. Plain data types (``builtins.dict``, ``defaultdict``) are
read as plain data."""


class _Placeholder:
    """Stands in for an allow-listed class (:data:`STUBBED_GLOBALS`): keeps the pickled state as data, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _plain_dict(*args, **kwargs) -> dict:
    """``defaultdict(factory)`` read as a plain dict (torch's safe unpickler fills only exact dicts)."""
    return {}


_PLAIN_TYPES: tp.Dict[str, tp.Callable] = {
    **{f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, int, float, str, bool, bytes)},
    "collections.defaultdict": _plain_dict}
"""Plain data types such configs name (``defaultdict(dict)``): they build only data."""


def _allowed(name: str) -> bool:
    return name in _PLAIN_TYPES or any(name == g or (g.endswith(".") and name.startswith(g)) for g in STUBBED_GLOBALS)


def _stand_in(name: str) -> type:
    if name in _PLAIN_TYPES:
        return _PLAIN_TYPES[name]
    module, _, qualname = name.rpartition(".")
    return type(qualname, (_Placeholder,), {"__module__": module})


def _unsupported_global(err: Exception) -> tp.Optional[str]:
    """The ``module.name`` torch's safe unpickler refused (None for other failures)."""
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
    return found.group(1) if found else None


def torch_load(path: tp.Union[str, os.PathLike], what: str = "torch checkpoint", lenient: bool = False) -> tp.Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, numbers, strings and containers only.

    ``lenient`` also reads the foreign classes of :data:`STUBBED_GLOBALS` (audiocraft's omegaconf config) as inert
    placeholders, still through torch's safe unpickler. Anything else a pickle names (``os.system``, a class whose
    ``__reduce__`` runs code) is refused before it is imported: ``CheckpointError("{path}: refused to load ...")``.
    Any other failure (missing file, truncated download) raises ``CheckpointError("{path}: not a readable {what}
    (...)")``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        name = _unsupported_global(err)
        if name is None:
            raise CheckpointError(f"{path}: not a readable {what} ({type(err).__name__}): re-download or "
                                  "re-export it") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) pickle: judge it by the first refused name
        names = [name]
    refused = [n for n in names if not lenient or not _allowed(n)]
    if refused:
        raise CheckpointError(f"{path}: refused to load this {what}: it pickles '{refused[0]}', which could run code "
                              "when loaded; only tensors and plain data are read (get the weights as a state dict or "
                              "safetensors file)")
    try:
        with torch.serialization.safe_globals([(_stand_in(n), n) for n in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        name = _unsupported_global(err)
        why = f"it pickles '{name}'" if name else f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        raise CheckpointError(f"{path}: not a readable {what} ({why})") from None


def load_state_dict_strict(module: torch.nn.Module, state: tp.Mapping[str, torch.Tensor], what: str,
                           fix: str = "") -> torch.nn.Module:
    """Load ``state`` into ``module`` requiring every key and shape to match; returns ``module``.

    Raises ``CheckpointError("{what} (missing [...], unexpected [...]); {fix}")`` (first three keys of each, sorted)
    or ``"{what} (size mismatch ...)"`` for a shape mismatch.
    """
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        first = [line.strip() for line in str(err).splitlines() if "size mismatch" in line][:1]
        raise CheckpointError(f"{what} ({first[0] if first else str(err).splitlines()[0]})"
                              f"{'; ' + fix if fix else ''}") from None
    if missing or unexpected:
        raise CheckpointError(f"{what} (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
                              f"{'; ' + fix if fix else ''}")
    return module


def error_reason(err: BaseException) -> str:
    """The first line of an exception's text, whole (never cut mid-word: a truncated reason hides the cause)."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


# --------------------------------------------------------------------------------------------------- the hub
HUB_PROBE_SECONDS = 3.0
"""How long the one reachability check may take (a TCP connect to the hub or the proxy; DNS included)."""
_TRUE = ("1", "on", "yes", "true")
_hub_state: tp.Dict[str, bool] = {}
"""Per process: ``{"reachable": bool}`` after the first probe (tests clear it)."""


def hub_is_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set (environment or the already-imported client's constant)."""
    if any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_address() -> tp.Tuple[str, int]:
    """(host, port) the hub client would connect to first: the HTTPS proxy when one is set, else ``HF_ENDPOINT``."""
    from urllib.parse import urlsplit

    constants = sys.modules.get("huggingface_hub.constants")
    endpoint = getattr(constants, "ENDPOINT", None) or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), "")
    url = urlsplit(proxy if proxy and "://" in proxy else endpoint)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable() -> bool:
    """One connection attempt to the hub (memoised for the process), at most :data:`HUB_PROBE_SECONDS`.

    Run in a thread because name resolution ignores socket timeouts; an answer that comes too late counts as none.
    """
    if "reachable" not in _hub_state:
        result: tp.List[bool] = []

        def probe() -> None:
            try:
                socket.create_connection(_hub_address(), timeout=HUB_PROBE_SECONDS).close()
                result.append(True)
            except OSError:
                result.append(False)

        worker = threading.Thread(target=probe, daemon=True)
        worker.start()
        worker.join(HUB_PROBE_SECONDS + 0.5)
        _hub_state["reachable"] = bool(result and result[0])
    return _hub_state["reachable"]


def go_offline() -> None:
    """Offline mode for this process: the environment (clients imported later) and the imported client itself."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def offline_if_unreachable() -> bool:
    """For entry points and loaders: True when this process works offline, after switching to offline mode when
    ``HF_HUB_OFFLINE`` is unset and the hub does not answer (one log line says so and how to skip the check)."""
    if hub_is_offline():
        return True
    if hub_reachable():
        return False
    host, port = _hub_address()
    log.warning("the Hugging Face hub (%s:%d) is unreachable: working offline, from local folders and the cache "
                "(export HF_HUB_OFFLINE=1 to skip this check)", host, port)
    go_offline()
    return True


_HUB_ID = re.compile(r"^[\w.-]{1,96}(/[\w.-]{1,96})?$")  # huggingface_hub's repo-id form (org/name or name)


def hub_cached(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of ``repo_id`` (a model repo), without any request."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def resolve_pretrained(source: str, what: str, fix: str) -> str:
    """``source`` (a local folder/file or a hub name) when it can load, else one :class:`CheckpointError` line at
    once, before any hub request:

    - an existing path: itself;
    - a path that does not exist (absolute, ``./``/``~``, or not of the hub's ``org/name`` form): "no such folder";
    - a hub name in the local cache: itself (offline mode when the hub is unreachable, so no request is retried);
    - a hub name not in the cache: tried once (one connection attempt); offline or unreachable, the error says so.
    ``fix`` ends the message (what to download, which setting to point at the folder).
    """
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    looks_like_path = (path.is_absolute() or source.startswith(("./", "../", "~", ".\\")) or "\\" in source
                       or not _HUB_ID.match(source) or "--" in source or ".." in source)
    if looks_like_path:
        raise CheckpointError(f"{what} '{source}' is not available offline: no such folder or file here: {fix}")
    offline = offline_if_unreachable()
    if hub_cached(source) or not offline:
        return source
    why = "HF_HUB_OFFLINE=1" if _hub_state.get("reachable", True) else "the hub is unreachable from here"
    raise CheckpointError(f"{what} '{source}' is not available offline: not a local folder and not in the local "
                          f"Hugging Face cache ({why}): {fix}")


def hf_pretrained(cls: tp.Any, source: str, what: str, fix: tp.Optional[str] = None, **kwargs: tp.Any) -> tp.Any:
    """``cls.from_pretrained(source, **kwargs)`` from a local folder or the local Hugging Face cache.

    :func:`resolve_pretrained` answers first (no hub retries); a model that still does not load raises
    ``CheckpointError("{what} '{source}' is not available offline (<reason, whole>): {fix}")``; the default fix
    names ``huggingface-cli download`` and a local folder.
    """
    fix = fix or (f"run `huggingface-cli download {source}` on a machine with internet, or pass a local folder")
    source = resolve_pretrained(source, what, fix)
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{what} '{source}' is not available offline ({error_reason(err)}): {fix}") from None


def load_clap(source: str):
    """(ClapModel in eval mode, feature extractor, tokenizer or None) from a hub name in the cache or a folder.

    Shared by the CLAP metrics (:mod:`vmas.metrics.embeddings`, audio tower) and the CLAP tag encoder
    (:mod:`vmas.tags.text_encoder`, text tower), so both read the same files with the same offline error.
    A folder with only model weights gets CLAP's default feature extractor (48 kHz, the model's mel bins).
    """
    from transformers import AutoFeatureExtractor, AutoTokenizer, ClapFeatureExtractor, ClapModel

    model = hf_pretrained(ClapModel, source, "CLAP model").eval()
    try:
        fe = AutoFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError):
        fe = ClapFeatureExtractor(feature_size=model.config.audio_config.num_mel_bins)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        tok = None
    return model, fe, tok
