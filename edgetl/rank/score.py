"""`edgetl rank`: score candidate backbones on the training images before fine-tuning any.

Each candidate embeds the training split once through the same embedding cache the linear
probe uses (edgetl.transfer.features), so ranking fills the cache a later fine-tune of the
same images reads, and a rank after a fine-tune embeds nothing. Only the training split is
embedded and scored: the validation split stays unseen by every decision, this one included.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetl.backbones import get_spec
from edgetl.data import data_root, load_split
from edgetl.errors import EdgetlError
from edgetl.rank.candidates import Candidate
from edgetl.rank.knn import DEFAULT_K, knn_accuracy
from edgetl.rank.logme import logme

log = logging.getLogger("edgetl")


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's scores on the training split.

    Attributes:
        name: `backbone@size`.
        backbone, input_size: the candidate.
        logme: LogME, nats per image (higher is better; compare on the same data only).
        knn_top1: leave-one-out k-NN accuracy in [0, 1].
        n: training images scored.
        dim: embedding width.
        embedded: images this call had to embed (0: all came from the cache).
        embed_seconds, score_seconds: wall time of the two parts.
    """

    name: str
    backbone: str
    input_size: int
    logme: float
    knn_top1: float
    n: int
    dim: int
    embedded: int
    embed_seconds: float
    score_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Ranking:
    """Candidates best first (by LogME), and the split they were scored on."""

    data: Path
    layout: str
    labels: list[str]
    val_split: float | None
    seed: int
    k: int
    scores: list[CandidateScore] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """What `edgetl rank --json` prints."""
        return {"data": str(self.data), "layout": self.layout, "labels": self.labels, "val_split": self.val_split,
                "seed": self.seed, "split": "train", "knn_k": self.k, "seconds": self.seconds,
                "candidates": [s.to_dict() for s in self.scores]}


def rank(data: str | Path, candidates: list[Candidate], *, val_split: float = 0.2, seed: int = 0,
         cache_dir: str | Path | None = None, weights: str = "default", k: int = DEFAULT_K) -> Ranking:
    """Score each candidate's frozen embeddings of the training split by LogME and k-NN.

    Args:
        data: `DATA/train` + `DATA/val`, or `DATA/<class>/*` split as `edgetl finetune` splits
            it (same `val_split` and `seed` give the same training images).
        candidates: what to score (see `edgetl.rank.parse_candidate`); duplicates are scored once.
        val_split, seed: the split of a folder without train/ and val/.
        cache_dir: the embedding cache (default `$EDGETL_CACHE` or ~/.cache/edgetl).
        weights: the backbones' weights, as `edgetl finetune --weights`.
        k: k-NN neighbours.

    Returns:
        Ranking, best LogME first.

    Raises:
        EdgetlError: no candidates, unreadable data, missing weights.
    """
    # torch and timm load here, not on `import edgetl.rank` (top_k is called torch-free).
    import torch

    from edgetl.transfer.features import EmbeddingCache
    from edgetl.transfer.pretrained import PretrainedBackbone

    candidates = list(dict.fromkeys(candidates))
    if not candidates:
        raise EdgetlError("no candidates to rank; pass candidates (--candidate NAME[@SIZE]) or a project file with `candidates`")
    started = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # as finetune: same embeddings, same speed
    data = data_root(data)
    caches = {}
    for c in candidates:
        spec = get_spec(c.backbone)
        preprocess = spec.preprocess("NCHW", c.input_size)
        backbone = PretrainedBackbone(spec, weights, cache_dir)
        # `about` as finetune writes it, so `edgetl cache` describes entries the same either way.
        caches[c] = EmbeddingCache(backbone.digest, backbone.module, preprocess, cache_dir,
                                   about={"backbone": spec.name, "weights": backbone.origin,
                                          "preprocess": preprocess.to_dict()})
    # A file some candidate embedded before decoded fine then: the scan need not decode it again.
    split = load_split(data, val_split, seed, known_good=lambda p: any(c.contains(p) for c in caches.values()))
    paths = [p for p, _ in split.train]
    labels = [c for _, c in split.train]
    log.info("ranking %d candidates on '%s' (%s): %d classes, %d training images (the validation split is not "
             "looked at)", len(candidates), split.root, split.layout, len(split.labels), len(paths))
    scores = []
    for c, cache in caches.items():
        t0 = time.perf_counter()
        missing = sum(not cache.contains(p) for p in paths)
        x = cache.embed(paths, f"embedding train images for {c.name}")
        t1 = time.perf_counter()
        score = CandidateScore(c.name, c.backbone, c.input_size, logme(x, labels, len(split.labels)),
                               knn_accuracy(x, labels, k), len(paths), int(x.shape[1]), missing, t1 - t0,
                               time.perf_counter() - t1)
        log.info("%s: LogME %.4f, %d-NN %.4f (%d embedded, %.1f s + %.2f s scoring)", c.name, score.logme, k,
                 score.knn_top1, missing, score.embed_seconds, score.score_seconds)
        scores.append(score)
    scores.sort(key=lambda s: (s.logme, s.knn_top1), reverse=True)
    return Ranking(split.root, split.layout, split.labels, split.val_split, split.seed, k, scores,
                   time.perf_counter() - started)
