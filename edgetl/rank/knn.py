"""Leave-one-out k-nearest-neighbour accuracy on frozen embeddings (numpy only).

A second, assumption-light transferability score beside LogME: each image is classified by
the majority label of its k most cosine-similar other images. It needs no fitting at all,
and it sees non-linear class structure that a linear model's evidence does not.
"""

from __future__ import annotations

import numpy as np

from edgetl.errors import EdgetlError

DEFAULT_K = 5
# Similarity rows computed at a time: 1024 x n float32 keeps memory at 4 MB per 1000 images
# however large the training split is.
CHUNK = 1024


def normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), as float32."""
    f = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(norms, 1e-12)


def knn_accuracy(features: np.ndarray, labels, k: int = DEFAULT_K) -> float:
    """Leave-one-out k-NN top-1 on L2-normalised embeddings (cosine similarity).

    Args:
        features: [n, D] embeddings.
        labels: [n] class indices.
        k: neighbours that vote; capped at n - 1. Ties between classes go to the one whose
            voters are more similar in total.

    Returns:
        The fraction of images whose neighbours' vote names their own class, in [0, 1].

    Raises:
        EdgetlError: k < 1, fewer than 2 images, or labels that do not match the features.
    """
    x = normalize(features)
    y = np.asarray(labels, dtype=np.int64)
    n = x.shape[0]
    if n < 2 or y.shape != (n,):
        raise EdgetlError(f"k-NN needs at least 2 images and one label each; got {n} rows and {len(y)} labels")
    if k < 1:
        raise EdgetlError(f"k-NN: k={k}; pass k >= 1")
    k = min(k, n - 1)
    n_classes = int(y.max()) + 1
    correct = 0
    for start in range(0, n, CHUNK):
        sims = x[start:start + CHUNK] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # leave the image itself out
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near_sims = np.take_along_axis(sims, nearest, axis=1)
        # One vote per neighbour; its similarity (|s| <= 1, scaled by 1e-3 so k similarities sum
        # to less than one vote) only breaks ties.
        votes = np.zeros((sims.shape[0], n_classes))
        np.add.at(votes, (np.repeat(rows, k), y[nearest].ravel()), 1.0 + 1e-3 * near_sims.ravel() / k)
        correct += int((votes.argmax(1) == y[start:start + CHUNK]).sum())
    return correct / n
