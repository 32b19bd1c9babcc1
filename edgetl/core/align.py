"""Embedding-statistics alignment (numpy only), shared by `edgetl adapt` and `edgetl-device adapt`.

A field camera moves the embeddings of the same scenes; alignment maps target embeddings
back onto the source's statistics with an affine map z -> A z + c, and the map is folded
into the linear head (`fold`), so the bundle stays one backbone + one head:

    head'(z) = W (A z + c) + b = (W A) z + (b + W c)

Two maps:
  per-dimension ("align"): each dimension's target mean/std to the source's;
      A = diag(s_src / s_tgt), c = m_src - A m_tgt.
  CORAL ("coral", Sun et al. 2016): also the correlations, through the correlation
      matrices shrunk toward the identity (Schaefer & Strimmer 2005, their target "D"):
      A = diag(s_src) R_src^1/2 R_tgt^-1/2 diag(1/s_tgt). A correlation matrix estimated
      from n < D images (Lite0: D = 1280; hymenoptera gives about 200) is singular, and its
      inverse square root would amplify noise directions without bound; shrinkage with the
      data-estimated intensity keeps every eigenvalue >= lambda. At lambda = 1 on both sides
      CORAL is exactly the per-dimension map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A dimension whose target spread collapsed (a channel that goes dark in low light) would
# get an unbounded scale; this caps A's per-dimension gain. On the simulated cheap camera
# (benchmarks/camera_shift.py) 12 to 24 of Lite0's 1280 dimensions hit it (the adaptation
# record's "clipped_dimensions"; docs/benchmarks.md).
MAX_SCALE = 10.0
STD_EPS = 1e-6


@dataclass(frozen=True)
class Moments:
    """Per-dimension mean and standard deviation of a set of embeddings."""

    mean: np.ndarray  # float64 [D]
    std: np.ndarray  # float64 [D]
    n: int

    @classmethod
    def of(cls, x: np.ndarray) -> "Moments":
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need at least 2 embeddings [N, D] for statistics, got shape {x.shape}")
        return cls(x.mean(axis=0), x.std(axis=0, ddof=1), len(x))


@dataclass(frozen=True)
class AffineMap:
    """z -> z @ matrix.T + shift, with `matrix` a vector when the map is diagonal."""

    matrix: np.ndarray  # [D] (diagonal) or [D, D]
    shift: np.ndarray  # [D]
    info: dict = field(default_factory=dict)

    @property
    def diagonal(self) -> bool:
        return self.matrix.ndim == 1

    def apply(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float64)
        return (z * self.matrix if self.diagonal else z @ self.matrix.T) + self.shift

    def toward_identity(self, strength: float) -> "AffineMap":
        """The map `strength` of the way from the identity (0) to this one (1): A_s = I + s (A - I),
        c_s = s c. Still affine, so it folds exactly; partial strength trades target accuracy for
        accuracy on source-like images (docs/benchmarks.md, "Adaptation to field images")."""
        eye = np.ones_like(self.matrix) if self.diagonal else np.eye(len(self.matrix))
        return AffineMap(eye + strength * (self.matrix - eye), strength * self.shift,
                         {**self.info, "strength": float(strength)})

    def inverse(self) -> "AffineMap":
        """The map back (source -> target domain): z = A^-1 (z' - c). A dimension the map sends
        to a constant (zero gain: constant in the source) has no inverse; it maps back to 0,
        which the folded head ignores there as the map did."""
        if self.diagonal:
            inv = np.divide(1.0, self.matrix, out=np.zeros_like(self.matrix, dtype=np.float64),
                            where=self.matrix != 0)
            return AffineMap(inv, -inv * self.shift, {"inverse_of": self.info.get("method")})
        inv = np.linalg.pinv(self.matrix)
        return AffineMap(inv, -inv @ self.shift, {"inverse_of": self.info.get("method")})


def _clip_scale(scale: np.ndarray) -> tuple[np.ndarray, int]:
    clipped = int(np.sum(scale > MAX_SCALE))
    return np.minimum(scale, MAX_SCALE), clipped


def per_dimension(source: Moments, target: Moments) -> AffineMap:
    """Target mean/std -> source mean/std, dimension by dimension.

    Args:
        source: moments of source-domain embeddings (what the head was trained on).
        target: moments of unlabeled target-domain embeddings.

    Returns:
        The diagonal AffineMap; `info` holds the method, the image counts and how many
        dimensions hit MAX_SCALE.
    """
    scale, clipped = _clip_scale(source.std / np.maximum(target.std, STD_EPS))
    shift = source.mean - scale * target.mean
    return AffineMap(scale, shift, {"method": "per-dimension", "n_source": source.n, "n_target": target.n,
                                    "clipped_dimensions": clipped, "max_scale": MAX_SCALE})


def shrinkage_intensity(x: np.ndarray) -> float:
    """Schaefer-Strimmer estimate of the shrinkage of the correlation matrix toward I.

    lambda = sum_{i!=j} Var(r_ij) / sum_{i!=j} r_ij^2 on standardised data, clipped to
    [0, 1]. The sums over all pairs are formed from per-row norms, so memory stays O(D^2).
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    std = x.std(axis=0, ddof=1)
    u = (x - x.mean(axis=0)) / np.maximum(std, STD_EPS)
    w_mean = u.T @ u / n  # mean of w_kij = u_ki u_kj
    diag = np.diag(w_mean)
    sq = np.sum(u * u, axis=1)
    # sum_k sum_{i!=j} (w_kij - w_mean_ij)^2 = sum_k sum_{i!=j} w_kij^2 - n sum_{i!=j} w_mean_ij^2
    off_w2 = float(np.sum(sq ** 2) - np.sum(u ** 4))
    off_mean2 = float(np.sum(w_mean ** 2) - np.sum(diag ** 2))
    var_r = n / (n - 1) ** 3 * (off_w2 - n * off_mean2)
    r2 = (n / (n - 1)) ** 2 * off_mean2
    if r2 <= 0:
        return 1.0
    return float(np.clip(var_r / r2, 0.0, 1.0))


def _shrunk_correlation(x: np.ndarray, lam: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(np.asarray(x, np.float64), rowvar=False)
    r = np.nan_to_num(r)  # a constant dimension has no correlation
    np.fill_diagonal(r, 1.0)
    return (1.0 - lam) * r + lam * np.eye(len(r))


def _sym_power(m: np.ndarray, power: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(m)
    values = np.maximum(values, 1e-12)
    return (vectors * values ** power) @ vectors.T


def coral(source: np.ndarray, target: np.ndarray) -> AffineMap:
    """CORAL with shrunk correlations: whiten with the target's, re-colour with the source's.

    Args:
        source: source-domain embeddings [Ns, D].
        target: target-domain embeddings [Nt, D].

    Returns:
        The full AffineMap; `info` holds both shrinkage intensities and the image counts.
    """
    ms, mt = Moments.of(source), Moments.of(target)
    lam_s, lam_t = shrinkage_intensity(source), shrinkage_intensity(target)
    colour = _sym_power(_shrunk_correlation(source, lam_s), 0.5)
    whiten = _sym_power(_shrunk_correlation(target, lam_t), -0.5)
    # The same per-dimension gain cap as `per_dimension`, on the standardising scales.
    _, clipped = _clip_scale(ms.std / np.maximum(mt.std, STD_EPS))
    inv_t = np.minimum(1.0 / np.maximum(mt.std, STD_EPS), MAX_SCALE / np.maximum(ms.std, STD_EPS))
    matrix = (ms.std[:, None] * (colour @ whiten)) * inv_t[None, :]
    shift = ms.mean - matrix @ mt.mean
    return AffineMap(matrix, shift, {"method": "coral", "n_source": ms.n, "n_target": mt.n,
                                     "shrinkage_source": round(lam_s, 4), "shrinkage_target": round(lam_t, 4),
                                     "clipped_dimensions": clipped})


def fold(weight: np.ndarray, bias: np.ndarray, amap: AffineMap) -> tuple[np.ndarray, np.ndarray]:
    """The head that applies `amap` first: W' = W A, b' = b + W c (float32 out, float64 inside).

    Args:
        weight: head weight [C, D].
        bias: head bias [C].
        amap: the alignment map.

    Returns:
        (weight', bias') as float32, so that x @ weight'.T + bias' == head(amap.apply(x)).
    """
    w = np.asarray(weight, np.float64)
    new_w = w * amap.matrix[None, :] if amap.diagonal else w @ amap.matrix
    new_b = np.asarray(bias, np.float64) + w @ amap.shift
    return new_w.astype(np.float32), new_b.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def prediction_scores(logits: np.ndarray) -> dict:
    """Label-free confidence of a model on a set: mean per-image entropy of the softmax (lower
    is more confident), the entropy of the mean prediction (how evenly the set is spread over
    the classes) and their difference, the information-maximisation score (lower is better;
    Liang et al. 2020): confidence alone would reward a map that sends every image to one class.
    """
    p = softmax(logits)
    ent = -np.sum(p * np.log(np.maximum(p, 1e-12)), axis=1)
    mean_p = p.mean(axis=0)
    marginal = float(-np.sum(mean_p * np.log(np.maximum(mean_p, 1e-12))))
    return {"mean_entropy": float(ent.mean()), "marginal_entropy": marginal,
            "im_score": float(ent.mean() - marginal)}
