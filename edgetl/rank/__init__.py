"""Transferability ranking: which backbone to fine-tune, scored on frozen embeddings.

    from edgetl.rank import parse_candidate, rank, top_k
    ranking = rank("images/", [parse_candidate("tf_efficientnet_lite0@288"), ...])
    keep = top_k(ranking.scores, 2)          # the build's `keep_top`

Scores: LogME (You et al., ICML 2021; `edgetl.rank.logme`) and leave-one-out k-NN accuracy
(`edgetl.rank.knn`). Importing this package loads numpy only; `rank` loads torch when called.
"""

from __future__ import annotations

from edgetl.rank.candidates import Candidate, Project, make_candidate, parse_candidate, read_project
from edgetl.rank.knn import knn_accuracy
from edgetl.rank.logme import logme
from edgetl.rank.select import top_k

__all__ = ["Candidate", "CandidateScore", "Project", "Ranking", "knn_accuracy", "logme", "make_candidate",
           "parse_candidate", "rank", "read_project", "top_k"]


def __getattr__(name: str):
    # The scoring pipeline imports edgetl.data (torch); load it on first use only.
    if name in ("rank", "CandidateScore", "Ranking"):
        from edgetl.rank import score

        return getattr(score, name)
    raise AttributeError(f"module 'edgetl.rank' has no attribute {name!r}")
