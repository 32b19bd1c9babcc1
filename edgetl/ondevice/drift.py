"""`edgetl-device drift`: have this camera's recent images drifted from what the model was
validated on? A two-sample test on embeddings, torch-free.

The reference sample is the bundle's reference set (embeddings of the run's validation
images, from the bundle's own backbone and precision); the recent sample is the given
images embedded the same way (cached like retrain's). The statistic is the unbiased squared
maximum mean discrepancy (MMD, Gretton et al. 2012) with an RBF kernel whose bandwidth is the
median pairwise distance of the pooled sample (the median heuristic); its null distribution
comes from permutations of the pooled sample, so the false-alarm rate is at most `alpha` for
recent images drawn like the reference ones whatever the embedding's distribution
(measured, and why the default alpha is 0.01: DEFAULT_ALPHA).

What counts as drift is any change of the embedding distribution: a new camera, light,
place, or a different mix of classes (a week of only one class drifts too).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from edgetl.backends import Backbone
from edgetl.bundle import Bundle
from edgetl.errors import EdgetlError
from edgetl.ondevice import guardrail
from edgetl.ondevice.embedcache import embed_files
from edgetl.ondevice.localdata import collect_images
from edgetl.ondevice.results import DriftResult

log = logging.getLogger("edgetl")

MIN_IMAGES = 10
DEFAULT_PERMUTATIONS = 1000
# The test is exact (false alarms <= alpha) for images exchangeable with the reference set,
# but real "clean" images never quite are: hymenoptera's training images against its
# validation reference set were flagged in 13 of 100 subsets of 50 at alpha 0.05, 1 at 0.01;
# the digits (one folder split at random) 2 and 1; the cheap camera 100 of 100 at both
# (docs/benchmarks.md, "Adaptation to field images"). Hence 0.01.
DEFAULT_ALPHA = 0.01
_BLOCK = 256  # permutations per matrix product: bounds memory at BLOCK x N floats


def rbf_kernel(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The pooled kernel matrix and its bandwidth (median pairwise distance, > 0)."""
    x = np.asarray(x, np.float64)
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    upper = d2[np.triu_indices(len(x), k=1)]
    bandwidth = math.sqrt(float(np.median(upper))) if upper.size else 1.0
    bandwidth = bandwidth if bandwidth > 0 else 1.0  # all images identical: any width gives 0
    return np.exp(-d2 / (2.0 * bandwidth * bandwidth)), bandwidth


def mmd2_unbiased(kernel: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each row of `member` ([P, N] booleans: True = the first sample)."""
    k = kernel.copy()
    np.fill_diagonal(k, 0.0)
    a = member.astype(np.float64)
    b = 1.0 - a
    m, n = a.sum(axis=1), b.sum(axis=1)
    ka, kb = a @ k, b @ k
    xx = np.sum(ka * a, axis=1) / (m * (m - 1))
    yy = np.sum(kb * b, axis=1) / (n * (n - 1))
    xy = np.sum(ka * b, axis=1) / (m * n)
    return xx + yy - 2.0 * xy


def mmd_test(reference: np.ndarray, recent: np.ndarray, permutations: int = DEFAULT_PERMUTATIONS,
             seed: int = 0, alpha: float = DEFAULT_ALPHA) -> tuple[float, float, float, float]:
    """Permutation two-sample test.

    Args:
        reference: [M, D] embeddings.
        recent: [N, D] embeddings.
        permutations: random relabellings of the pooled sample.
        seed: seeds the permutations.
        alpha: the level whose threshold is reported.

    Returns:
        (MMD^2, p-value, bandwidth, the permutation distribution's 1 - alpha quantile). The
        p-value is (1 + #{permuted >= observed}) / (1 + permutations), a valid level for any
        number of permutations.
    """
    pooled = np.concatenate([reference, recent])
    kernel, bandwidth = rbf_kernel(pooled)
    first = np.zeros(len(pooled), bool)
    first[:len(reference)] = True
    observed = float(mmd2_unbiased(kernel, first[None, :])[0])
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, permutations, _BLOCK):
        count = min(_BLOCK, permutations - start)
        member = np.stack([rng.permutation(first) for _ in range(count)])
        null.append(mmd2_unbiased(kernel, member))
    null_stats = np.concatenate(null) if null else np.zeros(0)
    p_value = (1.0 + float(np.sum(null_stats >= observed))) / (1.0 + permutations)
    threshold = float(np.quantile(null_stats, 1.0 - alpha)) if null_stats.size else float("nan")
    return observed, p_value, bandwidth, threshold


def drift(bundle: str | Path, images: list[str | Path] | str | Path, *, permutations: int = DEFAULT_PERMUTATIONS,
          alpha: float = DEFAULT_ALPHA, seed: int = 0, min_images: int = MIN_IMAGES) -> DriftResult:
    """Test whether recent images come from the distribution of the bundle's reference set.

    Args:
        bundle: the bundle folder (it must ship a reference set).
        images: recent image files and/or folders (recursive); bad files are skipped by name.
        permutations: permutations of the test (100 to 100000).
        alpha: the false-alarm rate accepted: drift is reported when the p-value is <= alpha.
        seed: seeds the permutations (same images + seed: same result).
        min_images: fewest usable recent images.

    Returns:
        DriftResult: score (MMD^2), p_value, drift (bool), bandwidth, sample sizes.

    Raises:
        EdgetlError: an untrusted bundle, no reference set, too few images, a bad number.
    """
    if isinstance(permutations, bool) or not isinstance(permutations, int) or not 100 <= permutations <= 100000:
        raise EdgetlError(f"permutations must be a whole number from 100 to 100000, not {permutations!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise EdgetlError(f"alpha must be a number between 0 and 1 (the accepted false-alarm rate), not {alpha!r}")
    seed = guardrail.check_seed(seed)
    items = [images] if isinstance(images, (str, Path)) else list(images)
    b = Bundle.open(bundle)
    ref_emb, _ = b.require_reference("the sample recent images are compared with")
    paths = collect_images([Path(i) for i in items])
    if len(paths) < min_images:
        raise EdgetlError(f"{len(paths)} usable image(s) given; drift needs at least {min_images} recent images "
                          "(a test on fewer cannot tell drift from chance)")
    emb, _ = embed_files(b, paths, lambda: Backbone.open(b))
    score, p_value, bandwidth, threshold = mmd_test(ref_emb, emb, permutations, seed, alpha)
    drifted = p_value <= alpha
    log.info("drift: MMD^2 %.5f (permutation threshold %.5f), p = %.4f, %s", score, threshold, p_value,
             "DRIFT" if drifted else "no drift")
    return DriftResult(str(bundle), len(paths), len(ref_emb), "mmd2-rbf", score, threshold, p_value, alpha,
                       permutations, bandwidth, drifted, seed)
