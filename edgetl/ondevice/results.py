"""What the on-device operations return: typed results, also printable as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class AdaptResult:
    """The outcome of add-class, retrain or adapt.

    `activated` is False when the guardrail refused the new head (the old one stays active,
    `version` is None); `forced` says a refused head was activated anyway.
    """

    action: str
    task: str
    parent: int
    version: int | None
    activated: bool
    forced: bool
    labels: list[str]
    metrics: dict
    label: str | None = None  # add-class: the new class

    @property
    def reasons(self) -> list[str]:
        return list(self.metrics.get("guardrail", {}).get("reasons", []))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeadVersion:
    version: int
    parent: int | None
    created: str
    source: str
    labels: list[str]
    sha256: str
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HeadsReport:
    """The head store of one task: its versions, the active one, and any problem found."""

    bundle: str
    task: str
    active: int
    versions: list[HeadVersion]
    problems: list[str]
    factory_only: bool  # no store yet: the factory head (version 0) is in use
    damaged: list[int] = field(default_factory=list)  # versions whose file is missing, tampered or unreadable

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DriftResult:
    """The outcome of `drift`: recent images against the bundle's reference set.

    `drift` is True when `p_value` <= `alpha`; `score` is the unbiased MMD^2 (about 0 without
    drift) and `threshold` the permutation distribution's 1 - alpha quantile.
    """

    bundle: str
    n_recent: int
    n_reference: int
    statistic: str
    score: float
    threshold: float
    p_value: float
    alpha: float
    permutations: int
    bandwidth: float
    drift: bool
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)
