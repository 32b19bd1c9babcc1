"""LogME: how well frozen features suit a labelling, without training a head (numpy only).

You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021 (arXiv:2102.11005). For each class, a Bayesian linear model
y = F w + noise, with prior w ~ N(0, 1/alpha I) and noise ~ N(0, 1/beta I), is fitted to the
one-vs-rest 0/1 target; its log marginal likelihood (the evidence), maximised over alpha and
beta and divided by the number of images, is averaged over the classes. Higher is better.

The evidence (Bishop, PRML eq. 3.86) with A = alpha I + beta F^T F and m = beta A^-1 F^T y:

    log p(y | F, alpha, beta) = D/2 log alpha + n/2 log beta - n/2 log 2 pi
                                - beta/2 |y - F m|^2 - alpha/2 m^T m - 1/2 log |A|

and the paper's fixed-point iteration (its Algorithm 1) maximises it:
gamma = sum_i beta s_i / (alpha + beta s_i), alpha = gamma / m^T m, beta = (n - gamma) / |y - F m|^2,
s_i the eigenvalues of F^T F. One thin SVD F = U S V^T, shared by every class and every
iteration, turns each step into sums over the singular values ("the SVD trick"): with
z = U^T y, m^T m = sum (beta s z / (alpha + beta s^2))^2 and
|y - F m|^2 = sum (alpha z / (alpha + beta s^2))^2 + |y|^2 - |z|^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgetl.errors import EdgetlError

# Relative change of alpha/beta below which the iteration has converged. The paper's code
# stops at 1e-2 after at most 11 steps; 1e-6 costs a few more scalar steps per class (each
# is a sum over at most D values) and puts the result within 1e-9 nats of the optimum in
# tests/test_rank.py::test_fixed_point_reaches_the_maximum.
TOLERANCE = 1e-6
MAX_ITERATIONS = 200


@dataclass(frozen=True)
class Spectrum:
    """The parts of F that the evidence needs: its singular values and width.

    Attributes:
        singular: the r = min(n, D) singular values of F (float64).
        u: the n x r left singular vectors.
        n: rows of F (images).
        dim: columns of F (embedding width D).
    """

    singular: np.ndarray
    u: np.ndarray
    n: int
    dim: int

    @classmethod
    def of(cls, features: np.ndarray) -> "Spectrum":
        """Thin SVD of the [n, D] feature matrix.

        Raises:
            EdgetlError: features are not a finite, non-empty 2-D array.
        """
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
            raise EdgetlError(f"LogME needs an [images, features] matrix with at least 2 images; got shape {f.shape}")
        if not np.isfinite(f).all():
            raise EdgetlError("LogME: the embeddings hold NaN or infinite values; clear the cache (`edgetl cache "
                              "--clear`) and embed again")
        n, dim = f.shape
        # The SVD through the smaller Gram matrix, as the paper's code does: on the digits'
        # 1651 x 1280 embeddings, eigh(F^T F) took 2.5 s against 6.3 s for np.linalg.svd
        # (2 loaded vCPUs). Squaring F loses the directions whose singular value is below
        # ~1e-8 of the largest; they are dropped, i.e. counted as zero, which changes
        # log(alpha + beta s^2) by beta s^2 / alpha: nothing at these scales.
        if n >= dim:
            eig, v = np.linalg.eigh(f.T @ f)
            keep = eig > eig.max() * max(n, dim) * np.finfo(np.float64).eps
            s = np.sqrt(eig[keep])
            u = (f @ v[:, keep]) / s
        else:
            eig, u = np.linalg.eigh(f @ f.T)
            keep = eig > eig.max() * max(n, dim) * np.finfo(np.float64).eps
            s, u = np.sqrt(eig[keep]), u[:, keep]
        return cls(s, u, n, dim)


def _terms(spec: Spectrum, z: np.ndarray, y_sq: float, alpha: float, beta: float) -> tuple[float, float, float]:
    """(gamma, m^T m, |y - F m|^2) at (alpha, beta), from the projections z = U^T y."""
    s2 = spec.singular ** 2
    denom = alpha + beta * s2
    gamma = float(np.sum(beta * s2 / denom))
    m_sq = float(np.sum((beta * spec.singular * z / denom) ** 2))
    # |y|^2 - |z|^2 is the part of y outside F's column space; clipped at 0 against rounding.
    residual = float(np.sum((alpha * z / denom) ** 2) + max(y_sq - float(z @ z), 0.0))
    return gamma, m_sq, residual


def log_evidence(spec: Spectrum, z: np.ndarray, y_sq: float, alpha: float, beta: float) -> float:
    """The log evidence log p(y | F, alpha, beta) (PRML eq. 3.86), through the SVD.

    Args:
        spec: `Spectrum.of(F)`.
        z: U^T y, the target's projection on F's left singular vectors.
        y_sq: |y|^2.
        alpha: prior precision of the weights (> 0).
        beta: noise precision (> 0).

    Returns:
        The log evidence in nats (not divided by n).
    """
    _, m_sq, residual = _terms(spec, z, y_sq, alpha, beta)
    s2 = spec.singular ** 2
    # |A| has the eigenvalues alpha + beta s_i along F's r right singular vectors, alpha on the rest.
    log_det = float(np.sum(np.log(alpha + beta * s2))) + (spec.dim - len(s2)) * math.log(alpha)
    return (spec.dim / 2 * math.log(alpha) + spec.n / 2 * math.log(beta) - spec.n / 2 * math.log(2 * math.pi)
            - beta / 2 * residual - alpha / 2 * m_sq - log_det / 2)


def maximize_evidence(spec: Spectrum, y: np.ndarray) -> tuple[float, float, float]:
    """Maximise the evidence of one target over (alpha, beta) by the paper's fixed point.

    Args:
        spec: `Spectrum.of(F)`.
        y: the [n] target (a class's 0/1 indicator).

    Returns:
        (alpha, beta, log evidence) at the fixed point.
    """
    y = np.asarray(y, dtype=np.float64)
    z = spec.u.T @ y
    y_sq = float(y @ y)
    alpha, beta = 1.0, 1.0  # the paper's start
    for _ in range(MAX_ITERATIONS):
        gamma, m_sq, residual = _terms(spec, z, y_sq, alpha, beta)
        # Guards: a target F fits exactly (residual 0) or that F cannot see (m 0) would divide by 0.
        new_alpha = gamma / max(m_sq, 1e-300)
        new_beta = max(spec.n - gamma, 1e-12) / max(residual, 1e-300)
        done = (abs(new_alpha - alpha) <= TOLERANCE * alpha and abs(new_beta - beta) <= TOLERANCE * beta)
        alpha, beta = min(max(new_alpha, 1e-12), 1e12), min(max(new_beta, 1e-12), 1e12)
        if done:
            break
    return alpha, beta, log_evidence(spec, z, y_sq, alpha, beta)


def logme(features: np.ndarray, labels, num_classes: int | None = None) -> float:
    """LogME score of features for a classification (You et al., ICML 2021).

    Args:
        features: [n, D] frozen embeddings (one row per image).
        labels: [n] class indices in 0..K-1.
        num_classes: K; default max(labels) + 1. A class without images is skipped.

    Returns:
        The maximised log evidence per image, averaged over the classes' one-vs-rest 0/1
        targets. Comparable between backbones on the same images and labels; higher means
        a linear head is likely to fit better.

    Raises:
        EdgetlError: labels do not match the features, fewer than two classes, bad features.
    """
    y = np.asarray(labels, dtype=np.int64)
    spec = Spectrum.of(features)
    if y.shape != (spec.n,):
        raise EdgetlError(f"LogME: {len(y)} labels for {spec.n} feature rows; pass one label per image")
    k = int(num_classes if num_classes is not None else y.max() + 1)
    present = [c for c in range(k) if (y == c).any()]
    if len(present) < 2:
        raise EdgetlError("LogME needs images of at least two classes")
    return float(np.mean([maximize_evidence(spec, (y == c).astype(np.float64))[2] / spec.n for c in present]))
