"""Sampling parameters of one generation: the one list of them, shared by the config, the request and the model.

A leaf module (no torch, no other vmas imports) so that :mod:`vmas.config` (``GenerationConfig`` extends it),
:mod:`vmas.generate` (``GenerationRequest`` resolves into it) and :meth:`vmas.models.vmas.VMAS.generate` all name the
same fields without any of them importing the others.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

GUIDES = ("all", "tags", "both")
DECODERS = ("cached", "recompute", "static", "static-compiled", "static-graph")
"""``MusicLM.generate(decode=...)``: implementations of the same sampling (same tokens for the same seed)."""


@dataclass
class SamplingParams:
    """How tokens are drawn and how classifier-free guidance is formed (MusicGen defaults, SPEC §4)."""

    cfg: float = 3.0
    """Classifier-free guidance scale (1 = no guidance)."""
    top_k: int = 250
    """Sample among the k most likely tokens (0 = off)."""
    top_p: float = 0.0
    """Nucleus sampling mass (0 = off; when > 0, top_k is ignored, as in audiocraft)."""
    temperature: float = 1.0
    """Softmax temperature (<= 0 = greedy)."""
    guide: str = "all"
    """CFG branch when the user gives tags: ``all`` (null video + null tags, SPEC §4), ``tags`` (keep the video,
    drop the tags: guidance amplifies only what the tags change) or ``both`` (the two together; ``VMAS.generate``)."""
    tag_cfg: float = 0.0
    """Guidance scale of the tags-only branch (``guide`` tags / both): how hard the user's tags are pushed against
    the picture. 0 = the same as ``cfg``."""
    decode: str = "cached"
    """Decoder implementation (:data:`DECODERS`; the same tokens for the same seed, only the speed differs):
    ``cached`` (KV cache, eager), ``static`` / ``static-compiled`` (fixed-shape step with sampling inside, eager /
    ``torch.compile``; the first call per setting compiles), ``static-graph`` (that step replayed as a CUDA graph;
    CUDA only), ``recompute`` (no cache; a benchmark baseline)."""

    def check(self) -> "SamplingParams":
        """Raise ValueError on a value no sampler accepts (kept out of ``__init__`` so configs report their own
        errors); returns self."""
        if self.guide not in GUIDES:
            raise ValueError(f"guide must be 'all', 'tags' or 'both', not {self.guide!r}")
        if self.decode not in DECODERS:
            raise ValueError(f"decode must be one of {', '.join(DECODERS)}, not {self.decode!r}")
        return self

    @staticmethod
    def names() -> typing.Tuple[str, ...]:
        """The field names, in order (what a request or a config may set)."""
        return tuple(f.name for f in dataclasses.fields(SamplingParams))

    @staticmethod
    def of(obj) -> "SamplingParams":
        """The sampling fields of any object that has them (a ``GenerationConfig``, a resolved request)."""
        return SamplingParams(**{name: getattr(obj, name) for name in SamplingParams.names()})

