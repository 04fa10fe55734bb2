"""KL divergence between audio-classifier label distributions, KL(reference || generated), paired by clip id.

The definition is AudioCraft's (``audiocraft/metrics/kld.py``: ``kl_divergence``, ``PasstKLDivergenceMetric``),
which the MusicGen-family papers and their video-to-music successors report:

1. each clip (reference and generated cut to the same length: AudioCraft asserts equal shapes) is resampled to the
   classifier's rate and split into consecutive ``chunk_seconds`` (10 s) segments, **without padding**; a segment
   of at most ``min_seconds`` (0.15 s) is dropped;
2. every segment gets its own label distribution, ``softmax`` over the classifier's logits;
3. segment i of the generated clip is paired with segment i of the reference clip and
   ``KL = sum_c p_ref[c] (log p_ref[c] - log(p_gen[c] + eps))``, eps = 1e-6 *added* to the generated
   probabilities (``torch.nn.functional.kl_div((p_gen + eps).log(), p_ref)``; a label with p_ref = 0 adds 0);
4. the metric is the mean over **all segment pairs** of all clips (a 30 s clip weighs three times a 10 s one).

Known difference left in: AudioCraft resamples with ``julius``; here scipy's polyphase filter (docs/metrics.md).

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

from vmas.errors import CheckpointError, ConfigError, DataError, VmasError
from vmas.metrics.embeddings import _real_stft, module_device, resample, vggish_log_mel


def kl_divergence(p_ref: np.ndarray, p_gen: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """KL(p_ref || p_gen) along the last axis, AudioCraft's formula: ``eps`` is added to the generated
    probabilities inside the log (so identical distributions give a tiny negative number, about -eps per label,
    not 0), and terms with p_ref = 0 contribute 0 (``kl_div``'s convention)."""
    p = np.asarray(p_ref, dtype=np.float64)
    q = np.asarray(p_gen, dtype=np.float64)
    safe_p = np.where(p > 0, p, 1.0)
    terms = np.where(p > 0, p * (np.log(safe_p) - np.log(q + eps)), 0.0)
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
    min_seconds: float = 0.15
    """Segments of at most this length are dropped (AudioCraft: they break PaSST)."""

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
                "activation": self.activation, "chunk_seconds": self.chunk_seconds, "min_seconds": self.min_seconds,
                "paper_setting": self.paper_setting}


def chunk_distributions(classifier: AudioClassifier, wav: np.ndarray, sr: int) -> np.ndarray:
    """Label distribution of each ``chunk_seconds`` segment -> [n_segments, C] (AudioCraft's segmentation: no
    padding, segments of at most ``min_seconds`` dropped; n_segments may be 0 for a very short clip)."""
    x = resample(np.asarray(wav, dtype=np.float32), sr, classifier.sample_rate)
    n = int(round(classifier.chunk_seconds * classifier.sample_rate))
    shortest = int(classifier.min_seconds * classifier.sample_rate)
    segments = [x[i: i + n] for i in range(0, len(x), n)]
    segments = [c for c in segments if len(c) > shortest]
    out = np.zeros((0, classifier.num_labels or 0))
    with torch.no_grad():
        probs = [classifier.probs(torch.from_numpy(np.ascontiguousarray(c))[None])[0].cpu().numpy() for c in segments]
    return np.stack(probs) if probs else out


def label_distribution(classifier: AudioClassifier, wav: np.ndarray, sr: int) -> np.ndarray:
    """Mean label distribution [C] over the clip's segments (a summary for inspection; the metric pairs segments,
    see :class:`KLDivergence`)."""
    probs = chunk_distributions(classifier, wav, sr)
    if not len(probs):
        raise DataError(f"clip of {len(wav) / sr:.2f} s is too short for the classifier "
                        f"(needs more than {classifier.min_seconds} s)")
    return probs.mean(0)


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
        inputs = self.fe([w.cpu().numpy() for w in x], sampling_rate=self.sample_rate, return_tensors="pt")
        device = module_device(self.model)
        return self.model(**{k: v.to(device) for k, v in inputs.items()}).logits


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
            return self.model(x.float().to(module_device(self.model)))


def build_classifier(spec: str) -> AudioClassifier:
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "passt":
        return PasstClassifier()
    if kind == "ast":
        return ASTClassifier(arg or "MIT/ast-finetuned-audioset-10-10-0.4593")
    if kind == "mel":
        return MelBandClassifier()
    raise ConfigError(f"unknown KL classifier '{spec}'; use passt, ast:<name|folder> or mel")


class KLDivergence:
    """Torchmetrics-style paired KL (AudioCraft's definition, module docstring): ``update(ids, p_ref, p_gen)`` with
    one distribution per clip, ``update_segments(id, P_ref, P_gen)`` with one per segment, or
    ``update_audio(id, ref_wav, ref_sr, gen_wav, gen_sr)``. ``compute()`` is the mean over all segment pairs.

    Args:
        classifier (AudioClassifier, optional): needed only for :meth:`update_audio`.
        eps (float): added to the generated probabilities inside the log.
    """

    def __init__(self, classifier: tp.Optional[AudioClassifier] = None, eps: float = 1e-6):
        self.classifier = classifier
        self.eps = eps
        self.reset()

    def reset(self) -> None:
        self.pq: tp.Dict[str, np.ndarray] = {}  # clip id -> KL(ref || gen) of each segment pair [n]
        self.qp: tp.Dict[str, np.ndarray] = {}  # clip id -> KL(gen || ref) of each segment pair [n]
        self.skipped: tp.List[str] = []

    def update_segments(self, clip_id: str, p_ref, p_gen) -> None:
        """p_ref [n, C], p_gen [m, C]: segment i of one clip against segment i of the other (first min(n, m))."""
        p_ref, p_gen = np.atleast_2d(np.asarray(p_ref, np.float64)), np.atleast_2d(np.asarray(p_gen, np.float64))
        n = min(len(p_ref), len(p_gen))
        if n == 0:  # AudioCraft returns no distribution for such a clip and skips it
            self.skipped.append(str(clip_id))
            return
        if p_ref.shape[1] != p_gen.shape[1]:
            raise VmasError(f"KL: clip {clip_id} has {p_ref.shape[1]} reference labels but {p_gen.shape[1]} "
                            f"generated ones; use one classifier for both")
        self.pq[str(clip_id)] = kl_divergence(p_ref[:n], p_gen[:n], self.eps)
        self.qp[str(clip_id)] = kl_divergence(p_gen[:n], p_ref[:n], self.eps)

    def update(self, ids: tp.Sequence[str], p_ref, p_gen) -> None:
        """p_ref / p_gen: [B, C] label distributions (one segment each) of the clips with the same id."""
        p_ref, p_gen = np.atleast_2d(np.asarray(p_ref, np.float64)), np.atleast_2d(np.asarray(p_gen, np.float64))
        for i, key in enumerate(ids):
            self.update_segments(key, p_ref[i: i + 1], p_gen[i: i + 1])

    def update_audio(self, clip_id: str, ref_wav: np.ndarray, ref_sr: int, gen_wav: np.ndarray, gen_sr: int) -> None:
        if self.classifier is None:
            raise VmasError("KLDivergence.update_audio needs a classifier; build one with build_classifier()")
        seconds = min(len(ref_wav) / ref_sr, len(gen_wav) / gen_sr)  # AudioCraft compares equal-length clips
        ref_wav, gen_wav = ref_wav[: int(round(seconds * ref_sr))], gen_wav[: int(round(seconds * gen_sr))]
        self.update_segments(clip_id, chunk_distributions(self.classifier, ref_wav, ref_sr),
                             chunk_distributions(self.classifier, gen_wav, gen_sr))

    def per_clip(self) -> tp.Dict[str, float]:
        """Mean KL(ref || gen) over each clip's segment pairs."""
        return {k: float(v.mean()) for k, v in sorted(self.pq.items())}

    def compute_all(self) -> tp.Dict[str, float]:
        """AudioCraft's dictionary: ``kld`` = ``kld_pq`` = KL(ref || gen), ``kld_qp`` = KL(gen || ref), their sum."""
        if not self.pq:
            raise VmasError("KL: no clip pairs were added; check that generated files are named by clip id")
        pq = float(np.concatenate(list(self.pq.values())).mean())
        qp = float(np.concatenate(list(self.qp.values())).mean())
        return {"kld": pq, "kld_pq": pq, "kld_qp": qp, "kld_both": pq + qp}

    def compute(self) -> float:
        return self.compute_all()["kld"]

    def meta(self) -> tp.Dict[str, tp.Any]:
        return {"pairs": len(self.pq), "segment_pairs": int(sum(len(v) for v in self.pq.values())),
                "direction": "KL(reference || generated)", "eps": self.eps, "definition": "audiocraft kld.py",
                "skipped_short_clips": self.skipped,
                "classifier": self.classifier.describe() if self.classifier is not None else None}
