"""The inference bundle: a model with its codec and the few settings generation needs, as plain typed values.

Built by :func:`vmas.builders.build_pipeline` (from a config) and returned by :func:`vmas.hub.load_model` (from a
checkpoint). Generation (:mod:`vmas.generate`, the CLI) reads :class:`GenerationSpec` instead of walking the whole
:class:`vmas.config.Config`, so what a window, a tag or a beat grid needs is listed in one place.

Layer: above the models (it holds them), below builders / hub / generate (they make and use it); it imports nothing
from those.
"""
from __future__ import annotations

import dataclasses
import typing as tp

import torch
from torch import nn

from vmas.sampling import SamplingParams


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """What generation needs to know about a model besides its weights (from ``data``, ``model.tags``,
    ``model.lm`` and ``generation`` of its config; :func:`vmas.builders.build_generation_spec`)."""

    window_seconds: float
    """Seconds of music (and video) the model sees at once (``data.clip_seconds``)."""
    fps: float
    """Video frames per second fed to the encoder (``data.fps``)."""
    image_size: int
    """Side of the square frames fed to the encoder (``data.image_size``)."""
    sampling: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    """The model's default sampling (``generation``); a request overrides single fields."""
    tags: bool = False
    """The model has a tag branch (``model.tags.enabled``)."""
    max_tags: int = 16
    """Tags kept per video after merging (``model.tags.max_tags``)."""
    captioner: str = ""
    llm: str = ""
    """Auto-tagging models (``model.tags.captioner`` / ``model.tags.llm``), for ``--auto-tags``."""
    beat_condition: bool = False
    """The model takes a beat grid (``model.lm.beat_condition``): tempo requests become grids."""
    beat_from_video: bool = False
    """Default for fitting the grid to the picture's motion (``generation.beat_from_video``)."""


@dataclasses.dataclass
class VMASPipeline:
    """Everything inference needs: model (EMA weights, eval mode), codec, generation spec, and a note on provenance.

    ``config`` is the full :class:`vmas.config.Config` the model was built from, kept for tools that report or
    rebuild it; generation itself reads ``spec``. The tag text encoder is built on first use through
    ``text_encoder_factory`` (given by the builder), so loading a model stays cheap when no tags are asked for.
    """

    model: nn.Module
    codec: nn.Module
    spec: GenerationSpec
    config: tp.Any = None
    note: str = ""
    text_encoder: tp.Any = None
    text_encoder_factory: tp.Optional[tp.Callable[[torch.device], tp.Any]] = dataclasses.field(default=None,
                                                                                                repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def get_text_encoder(self):
        """The tag text encoder (built on first use; None when the model has no tag branch)."""
        if self.text_encoder is None and self.spec.tags and self.text_encoder_factory is not None:
            self.text_encoder = self.text_encoder_factory(self.device)
        return self.text_encoder
