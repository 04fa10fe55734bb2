"""KL divergence between audio-classifier label distributions, KL(reference || generated), paired by clip id.

Per clip: the audio is cut into 10 s chunks, the classifier's label distribution of each chunk is averaged (the
AudioCraft/PaSST convention), and KL(p_ref || p_gen) = sum_c p_ref[c] (log p_ref[c] - log(max(p_gen[c], eps))) is
taken between the reference and generated clip with the same id. The metric is the mean over pairs.

Classifiers are pluggable through :class:`AudioClassifier` (``sample_rate``, ``num_labels``, ``name`` and
``logits(batch [B, N]) -> [B, C]``):

* ``passt``: PaSST-S (the paper's classifier) through the ``hear21passt`` package (``pip install hear21passt``;
  its weights download into the torch hub cache). Not installed here; the wrapper imports it lazily.
* ``ast:<hf name|folder>``: ``transformers.ASTForAudioClassification`` (e.g.
  ``MIT/ast-finetuned-audioset-10-10-0.4593``, AudioSet's 527 labels like PaSST).
* ``mel``: weight-free fallback (softmax over mean log-mel band energies, 64 "labels"); smoke tests only,
  NOT comparable with the paper.
* anything else: subclass :class:`AudioClassifier` and pass the instance to :class:`KLDivergence`.
"""
from __future__ import annotations

import typing as tp

import numpy as np
import torch

from vmas.errors import CheckpointError, VmasError
from vmas.metrics.embeddings import resample, vggish_log_mel


def kl_divergence(p_ref: np.ndarray, p_gen: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """KL(p_ref || p_gen) along the last axis. Generated probabilities are floored at ``eps`` inside the log
    (so identical distributions give exactly 0, unlike adding eps everywhere); terms with p_ref = 0 contribute 0."""
    p = np.asarray(p_ref, dtype=np.float64)
    q = np.asarray(p_gen, dtype=np.float64)
    safe_p = np.where(p > 0, p, 1.0)
    terms = np.where(p > 0, p * (np.log(safe_p) - np.log(np.maximum(q, eps))), 0.0)
    return terms.sum(-1)


class AudioClassifier:
    """Interface: ``logits(x float [B, N] at sample_rate) -> [B, C]``; ``activation`` maps logits to a
    distribution (``softmax`` as AudioCraft's PaSST KL)."""

    name: str = "classifier"
    sample_rate: int = 16000
    num_labels: int = 0
    paper_setting: bool = False
    activation: str = "softmax"
    chunk_seconds: float = 10.0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x).double()
        if self.activation == "softmax":
            return torch.softmax(z, -1)
        if self.activation == "sigmoid":  # multi-label, renormalised to a distribution
            s = torch.sigmoid(z)
            return s / s.sum(-1, keepdim=True)
        raise VmasError(f"unknown classifier activation '{self.activation}'; use softmax or sigmoid")

    def describe(self) -> tp.Dict[str, tp.Any]:
        return {"name": self.name, "sample_rate": self.sample_rate, "labels": self.num_labels,
                "activation": self.activation, "chunk_seconds": self.chunk_seconds,
                "paper_setting": self.paper_setting}


def label_distribution(classifier: AudioClassifier, wav: np.ndarray, sr: int) -> np.ndarray:
    """Mean label distribution [C] over the clip's ``chunk_seconds`` chunks (last chunk zero-padded; a tail
    shorter than 1 s is dropped unless it is the whole clip)."""
    x = resample(np.asarray(wav, dtype=np.float32), sr, classifier.sample_rate)
    n = int(round(classifier.chunk_seconds * classifier.sample_rate))
    chunks = [x[i: i + n] for i in range(0, len(x), n)]
    chunks = [c for c in chunks if len(c) >= classifier.sample_rate] or chunks[:1]
    batch = torch.from_numpy(np.stack([np.pad(c, (0, n - len(c))) for c in chunks]))  # [n_chunks, n]
    with torch.no_grad():
        return classifier.probs(batch).mean(0).numpy()  # [C]


class MelBandClassifier(AudioClassifier):
    """Weight-free fallback: 'labels' = 64 log-mel bands, logits = mean log-mel energy per band."""

    name = "mel-bands (weight-free fallback, not comparable with the paper)"
    num_labels = 64

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.from_numpy(vggish_log_mel(w.numpy()).mean(0)) for w in x])


class ASTClassifier(AudioClassifier):
    """Audio Spectrogram Transformer (AudioSet labels) via ``transformers``; pass ``model``/``feature_extractor``
    to use an already-loaded one."""

    def __init__(self, source: str, model=None, feature_extractor=None):
        from transformers import ASTFeatureExtractor, ASTForAudioClassification, AutoFeatureExtractor

        from vmas.loading import hf_pretrained

        if model is None:
            model = hf_pretrained(ASTForAudioClassification, source, "AST classifier",
                                  fix=f"run `huggingface-cli download {source}` or pass a local folder "
                                      "(--kl-classifier ast:/path)")
            try:
                feature_extractor = AutoFeatureExtractor.from_pretrained(source)
            except (OSError, ValueError):
                feature_extractor = ASTFeatureExtractor(max_length=model.config.max_length,
                                                        num_mel_bins=model.config.num_mel_bins)
        self.model, self.fe = model.eval(), feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.num_labels = int(model.config.num_labels)
        self.name = f"ast:{source}"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        inputs = self.fe([w.numpy() for w in x], sampling_rate=self.sample_rate, return_tensors="pt")
        return self.model(**inputs).logits


class PasstClassifier(AudioClassifier):
    """PaSST-S (AudioSet, 527 labels, 32 kHz, 10 s input): the paper's classifier, via ``hear21passt``."""

    name = "passt (hear21passt passt_s_swa_p16_128_ap476)"
    sample_rate = 32000
    num_labels = 527
    paper_setting = True

    def __init__(self):
        try:
            from hear21passt.base import get_basic_model
        except ImportError as err:
            raise CheckpointError("PaSST needs the hear21passt package and its weights: pip install hear21passt "
                                  "(weights go to the torch hub cache), or use --kl-classifier ast:<name>") from err
        self.model = get_basic_model(mode="logits").eval()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with _real_stft():
            return self.model(x.float())


class _real_stft:
    """hear21passt's mel front end calls ``torch.stft`` without ``return_complex`` (an error in torch 2): serve it
    the old real-valued layout [..., freq, time, 2] via ``view_as_real`` while PaSST runs (AudioCraft does the same)."""

    def __enter__(self):
        self.orig = torch.stft

        def stft(*args, **kwargs):
            if kwargs.get("return_complex") is None:
                kwargs["return_complex"] = True
                return torch.view_as_real(self.orig(*args, **kwargs))
            return self.orig(*args, **kwargs)

        torch.stft = stft
        return self

    def __exit__(self, *exc):
        torch.stft = self.orig
        return False


def build_classifier(spec: str) -> AudioClassifier:
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "passt":
        return PasstClassifier()
    if kind == "ast":
        return ASTClassifier(arg or "MIT/ast-finetuned-audioset-10-10-0.4593")
    if kind == "mel":
        return MelBandClassifier()
    raise VmasError(f"unknown KL classifier '{spec}'; use passt, ast:<name|folder> or mel")


class KLDivergence:
    """Torchmetrics-style paired KL: ``update(ids, p_ref, p_gen)`` or ``update_audio(id, ref_wav, gen_wav, sr)``.

    Args:
        classifier (AudioClassifier, optional): needed only for :meth:`update_audio`.
        eps (float): floor of the generated probabilities inside the log.
    """

    def __init__(self, classifier: tp.Optional[AudioClassifier] = None, eps: float = 1e-6):
        self.classifier = classifier
        self.eps = eps
        self.reset()

    def reset(self) -> None:
        self.ref: tp.Dict[str, np.ndarray] = {}
        self.gen: tp.Dict[str, np.ndarray] = {}

    def update(self, ids: tp.Sequence[str], p_ref, p_gen) -> None:
        """p_ref / p_gen: [B, C] label distributions of the reference / generated clip with the same id."""
        p_ref, p_gen = np.atleast_2d(np.asarray(p_ref, np.float64)), np.atleast_2d(np.asarray(p_gen, np.float64))
        for i, key in enumerate(ids):
            self.ref[str(key)], self.gen[str(key)] = p_ref[i], p_gen[i]

    def update_audio(self, clip_id: str, ref_wav: np.ndarray, ref_sr: int, gen_wav: np.ndarray, gen_sr: int) -> None:
        if self.classifier is None:
            raise VmasError("KLDivergence.update_audio needs a classifier; build one with build_classifier()")
        self.update([clip_id], label_distribution(self.classifier, ref_wav, ref_sr)[None],
                    label_distribution(self.classifier, gen_wav, gen_sr)[None])

    def per_clip(self) -> tp.Dict[str, float]:
        return {k: float(kl_divergence(self.ref[k], self.gen[k], self.eps)) for k in sorted(self.ref)}

    def compute(self) -> float:
        if not self.ref:
            raise VmasError("KL: no clip pairs were added; check that generated files are named by clip id")
        return float(np.mean(list(self.per_clip().values())))

    def meta(self) -> tp.Dict[str, tp.Any]:
        return {"pairs": len(self.ref), "direction": "KL(reference || generated)", "eps": self.eps,
                "classifier": self.classifier.describe() if self.classifier is not None else None}
