"""Reading weights from disk and from the Hugging Face cache: one place for the three things every loader does.

- :func:`torch_load`: ``torch.load`` on the CPU, the safe (``weights_only``) unpickler first; audiocraft files pickle
  an omegaconf config beside the weights, so ``lenient=True`` retries with an unpickler that stubs unknown classes.
- :func:`load_state_dict_strict`: every key must match; a mismatch is one :class:`CheckpointError` line naming the
  first missing/unexpected keys (or the first shape mismatch) instead of torch's multi-page RuntimeError.
- :func:`hf_pretrained`: ``cls.from_pretrained`` from the local cache or a folder (the hub is offline here); a
  missing model is one line saying what to download and where to point the config.

Why one place: these used to be written four times with different error texts and different fallbacks (one codec
file read with the safe unpickler, the same file read by the LM loader with the lenient one). This module sits at
the bottom of the package (it imports only :mod:`vmas.errors`), so models, metrics, tags and data can all use it.
"""
from __future__ import annotations

import os
import pickle
import types
import typing as tp

import torch

from vmas.errors import CheckpointError


class _Placeholder:
    """Stands in for classes we do not have installed (audiocraft pickles an omegaconf config next to the weights)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Placeholder


_lenient_pickle = types.SimpleNamespace(Unpickler=_LenientUnpickler, load=pickle.load, __name__="vmas_lenient")


def torch_load(path: tp.Union[str, os.PathLike], what: str = "torch checkpoint", lenient: bool = False) -> tp.Any:
    """``torch.load(path)`` on the CPU with the safe unpickler; ``lenient`` retries unreadable objects with stubs.

    Any failure (missing file, truncated download, foreign pickle) raises ``CheckpointError("{path}: not a readable
    {what} (...)")``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        if not lenient:
            raise CheckpointError(f"{path}: not a readable {what} ({type(err).__name__}): re-download or "
                                  "re-export it") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from None


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


def hf_pretrained(cls: tp.Any, source: str, what: str, fix: tp.Optional[str] = None, **kwargs: tp.Any) -> tp.Any:
    """``cls.from_pretrained(source, **kwargs)`` from a local folder or the local Hugging Face cache.

    A model that is not there raises ``CheckpointError("{what} '{source}' is not available offline (...): {fix}")``;
    the default fix names ``huggingface-cli download`` and a local folder.
    """
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        fix = fix or (f"run `huggingface-cli download {source}` on a machine with internet, or pass a local folder")
        raise CheckpointError(f"{what} '{source}' is not available offline ({str(err).splitlines()[0][:100]}): "
                              f"{fix}") from None


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
