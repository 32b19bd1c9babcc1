"""The guardrail: a new head is activated only if it keeps the old classes' accuracy.

Old-class accuracy is top-1 on the samples whose true label the old head knows, with the new
head free to predict any of its classes (a new class that swallows old images counts as an
error). It is measured on the held-out slice of the local data and on the factory's
reference embeddings; local held-out data alone cannot catch mislabelled local data, the
reference set can.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from edgetl.bundle import Head
from edgetl.errors import EdgetlError
from edgetl.ondevice.results import AdaptResult

log = logging.getLogger("edgetl")

DEFAULT_TOLERANCE = 2.0  # percentage points of old-class accuracy a new head may lose


@dataclass(frozen=True)
class SetCheck:
    name: str
    n: int
    old_accuracy: float
    new_accuracy: float

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.old_accuracy - self.new_accuracy)


@dataclass
class Verdict:
    passed: bool
    tolerance: float
    checks: list[SetCheck] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "tolerance_points": self.tolerance, "reasons": self.reasons,
                "checks": [{**asdict(c), "drop_points": round(c.drop_points, 2)} for c in self.checks]}


def check_tolerance(tolerance: float) -> float:
    """NaN would compare false against every drop and silently switch the guardrail off."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or not 0 <= tolerance <= 100:
        raise EdgetlError(f"tolerance must be a number of percentage points from 0 to 100, not {tolerance!r}")
    return float(tolerance)


def check_seed(seed: int) -> int:
    """Seeds of the held-out split, the bootstrap and the permutations: a whole number numpy takes."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise EdgetlError(f"seed must be a whole number from 0 to 2**32-1, not {seed!r}")
    return seed


def accuracy(head: Head, emb: np.ndarray, labels: list[str]) -> float:
    predicted = np.asarray(head.labels)[head.predict(emb)]
    return float(np.mean(predicted == np.asarray(labels))) if len(labels) else 0.0


def check(old: Head, new: Head, sets: dict[str, tuple[np.ndarray, list[str]] | None],
          tolerance: float = DEFAULT_TOLERANCE) -> Verdict:
    """Compare `old` and `new` on each named set's old-class samples."""
    check_tolerance(tolerance)
    verdict = Verdict(passed=True, tolerance=tolerance)
    known = set(old.labels)
    for name, data in sets.items():
        if data is None:
            continue
        emb, labels = data
        keep = [i for i, lab in enumerate(labels) if lab in known]
        if not keep:
            continue
        sub_emb, sub_labels = emb[keep], [labels[i] for i in keep]
        c = SetCheck(name, len(keep), accuracy(old, sub_emb, sub_labels), accuracy(new, sub_emb, sub_labels))
        verdict.checks.append(c)
        if round(c.drop_points, 6) > tolerance:  # 86% -> 84% is a 2-point drop, not 2.0000000000000018
            verdict.passed = False
            verdict.reasons.append(f"old-class accuracy on the {name} set ({c.n} samples) drops from "
                                   f"{100 * c.old_accuracy:.1f}% to {100 * c.new_accuracy:.1f}% "
                                   f"({c.drop_points:.1f} points > tolerance {tolerance:g})")
    if not verdict.checks:
        log.warning("guardrail: no samples of the old classes to check against (no reference set in the "
                    "bundle and no old classes in the local data); the new head is activated unchecked")
    return verdict


def conclude(action: str, task: str, verdict: Verdict, force: bool, writer, new: Head, *, parent: int, source: str,
             data_digest: str, metrics: dict, label: str | None = None) -> AdaptResult:
    """The common end of add-class, retrain and adapt: activate `new` as a new version of the
    store (through the open `writer`) when the verdict allows it or `force` overrides it.

    Returns:
        AdaptResult; `version` is None and the old head stays active when refused.
    """
    activate = enforce(verdict, force)
    forced = force and not verdict.passed
    version = None
    if activate:
        metrics["forced"] = forced
        version = writer.add(new, parent=parent, source=source, data_digest=data_digest, metrics=metrics,
                             activate=True)
    return AdaptResult(action, task, parent, version, activate, forced, list(new.labels), metrics, label)


def enforce(verdict: Verdict, force: bool) -> bool:
    """Whether to activate: the verdict, unless --force overrides it (loudly)."""
    if verdict.passed:
        return True
    for reason in verdict.reasons:
        log.error("guardrail: %s", reason)
    if force:
        log.warning("force: ACTIVATING A HEAD THE GUARDRAIL REFUSED")
        return True
    return False
