"""Which candidates to keep after ranking (torch-free: the build calls it before any training)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from edgetl.errors import EdgetlError

T = TypeVar("T")


def _key(score) -> tuple[float, float]:
    if isinstance(score, Mapping):
        return float(score["logme"]), float(score.get("knn_top1") or 0.0)
    return float(score.logme), float(getattr(score, "knn_top1", 0.0) or 0.0)


def top_k(scores: Sequence[T], k: int) -> list[T]:
    """The `k` best-ranked candidates: highest LogME first, k-NN accuracy breaking ties.

    The `keep_top` rule of a build: fine-tune only what ranks best. Ties keep the input
    order (the sort is stable), so the project file's order decides between equals.

    Args:
        scores: `CandidateScore` objects, or dicts with `logme` (and optionally `knn_top1`),
            as `edgetl rank --json` prints them.
        k: how many to keep; more than there are keeps all of them.

    Returns:
        At most `k` of `scores`, best first.

    Raises:
        EdgetlError: k < 1.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EdgetlError(f"keep_top is {k!r}; pass a whole number >= 1 (the candidates to fine-tune)")
    return sorted(scores, key=_key, reverse=True)[:k]
