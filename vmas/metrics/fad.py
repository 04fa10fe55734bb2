"""Fréchet Audio Distance (Kilgour et al. 2019): Fréchet distance between Gaussians fitted to embeddings.

    FD = ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^{1/2})

The paper computes it on VGGish embeddings (one per 0.96 s example, all examples of all clips pooled). The trace
of the matrix square root is computed without a non-symmetric ``sqrtm``: with A = S_r^{1/2}, B = S_g^{1/2}
(symmetric PSD roots by ``eigh``), tr((S_r S_g)^{1/2}) = tr((A B B A)^{1/2}) = sum of the singular values of A B,
which are real and non-negative by construction, so there is no complex residue to discard (the scipy ``sqrtm`` route of the reference implementations is kept as
``method="sqrtm"`` for cross-checking, with its eps-offset fallback).
"""
from __future__ import annotations

import typing as tp

import numpy as np

from vmas.errors import VmasError


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "eigh", eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        method (str): ``eigh`` (default: symmetric roots by eigh, trace by SVD) or ``sqrtm`` (scipy.linalg.sqrtm of the
            product, real part, ``eps * I`` offset when the product is near-singular, as pytorch-fid/FAD do).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise VmasError(f"FAD: shape mismatch mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}; both sets "
                        f"must come from the same embedding backbone")
    diff = mu1 - mu2
    if method == "eigh":
        # tr((A B)(A B)^T)^(1/2) with A = S1^(1/2), B = S2^(1/2) is the nuclear norm of A B: singular values
        # avoid squaring tiny eigenvalues and taking their root back (which turns 1e-16 round-off into 1e-8)
        tr_covmean = float(np.linalg.svd(_psd_sqrt(s1) @ _psd_sqrt(s2), compute_uv=False).sum())
    elif method == "sqrtm":
        from scipy import linalg

        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        tr_covmean = float(np.trace(np.real(covmean)))
    else:
        raise VmasError(f"FAD: unknown method '{method}'; use eigh or sqrtm")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


class _GaussianStats:
    """Running sum / sum of outer products in float64 (constant memory in the number of clips)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.n = 0  # embeddings
        self.clips = 0
        self.sum: tp.Optional[np.ndarray] = None  # [D]
        self.outer: tp.Optional[np.ndarray] = None  # [D, D]

    def add(self, x: np.ndarray, clips: int) -> None:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if self.sum is None:
            self.sum, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self.sum.shape[0]:
            raise VmasError(f"FAD: embedding dim changed from {self.sum.shape[0]} to {x.shape[1]}; use one backbone")
        self.sum += x.sum(0)
        self.outer += x.T @ x
        self.n += x.shape[0]
        self.clips += clips

    def mean_cov(self) -> tp.Tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (``np.cov`` convention, ddof=1)."""
        if self.n < 2:
            raise VmasError(f"FAD needs at least 2 embeddings per set, got {self.n}; add more clips")
        mu = self.sum / self.n
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (cov + cov.T) / 2


class FrechetAudioDistance:
    """Torchmetrics-style FAD: ``update(emb, real=...)`` per clip (or batch of embeddings), ``compute()``.

    Args:
        embedder (AudioEmbedder, optional): needed only for :meth:`update_audio`.
        method (str): see :func:`frechet_distance`.
    """

    def __init__(self, embedder=None, method: str = "eigh"):
        self.embedder = embedder
        self.method = method
        self.real, self.fake = _GaussianStats(), _GaussianStats()

    def reset(self) -> None:
        self.real.reset()
        self.fake.reset()

    def update(self, embeddings, real: bool, clips: int = 1) -> None:
        """embeddings: [n, D] (numpy or tensor) from ``clips`` clips of the reference (real) or generated set."""
        if hasattr(embeddings, "detach"):
            embeddings = embeddings.detach().cpu().double().numpy()
        (self.real if real else self.fake).add(embeddings, clips)

    def update_audio(self, wav: np.ndarray, sr: int, real: bool) -> None:
        if self.embedder is None:
            raise VmasError("FrechetAudioDistance.update_audio needs an embedder; build one with build_embedder()")
        self.update(self.embedder.embed(wav, sr), real=real)

    def compute(self) -> float:
        mu_r, s_r = self.real.mean_cov()
        mu_g, s_g = self.fake.mean_cov()
        return frechet_distance(mu_r, s_r, mu_g, s_g, method=self.method)

    def meta(self) -> tp.Dict[str, tp.Any]:
        return {"clips_reference": self.real.clips, "clips_generated": self.fake.clips,
                "embeddings_reference": self.real.n, "embeddings_generated": self.fake.n,
                "backbone": self.embedder.describe() if self.embedder is not None else None}
