"""Per-target model selection under the device's latency budget, and the gates (pure functions).

Selection never looks at the validation split, whose accuracy the summary reports: each
candidate's bundle is scored on the run's selection split (training-side images that
fine-tuning held out, scored with the device runtime at verify). Among the candidates that
fit the latency budget and pass the accuracy gates *on that split*, the most accurate wins
(ties: the faster one). The gates are then applied to the chosen bundle on the validation
split: that verdict is what CI sees. Runs without a selection split (written before it
existed) fall back to the validation split, and the summary says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgetl.build.config import TargetSpec

GATES = ("verify", "max_drop_pts", "min_top1", "latency_budget_ms")


@dataclass
class Option:
    """One candidate's bundle for one target, with everything selection and the gates read."""

    candidate: str
    error: str | None = None  # export failed: why
    precision: str = ""
    fp32_top1: float | None = None  # validation split, reported
    top1: float | None = None  # the shipped precision, validation split, reported
    reproduced: bool = True
    manifest_top1: float | None = None
    verified_top1: float | None = None
    selection_top1: float | None = None  # the decision split
    selection_n: int | None = None  # its images
    fp32_selection_top1: float | None = None
    selection_split: str = "selection"
    latency: dict | None = None  # {"median", "p90", "source": "host"|"device", ...}
    extra: dict = field(default_factory=dict)

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency is None else float(self.latency["median"])

    @property
    def source(self) -> str:
        return "host" if self.latency is None else self.latency.get("source", "host")


def _pts(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def gate(name: str, value, limit, passed: bool, message: str, source: str = "", skipped: bool = False) -> dict:
    out = {"name": name, "value": value, "limit": limit, "passed": bool(passed), "message": message}
    if source:
        out["source"] = source
    if skipped:
        out["skipped"] = True
    return out


def evaluate_gates(target: str, spec: TargetSpec, o: Option) -> list[dict]:
    """The gates of the chosen bundle, on the validation split (the reported verdict).

    Returns:
        One dict per gate in GATES, plus `max_drop_pts[TASK]` per extra task of a multi-task
        bundle: name, value, limit, passed, message (naming the target, the figures and where
        the limit is set), source; min_top1 without a limit is `skipped` and passes.
    """
    out = []
    prec = o.precision.upper()
    if o.error:
        return [gate(n, None, None, False, f"target '{target}': no bundle to gate: candidate '{o.candidate}' failed "
                                           f"to export ({o.error})") for n in GATES]
    if o.reproduced:
        out.append(gate("verify", o.verified_top1, o.manifest_top1, True,
                        f"target '{target}': the written bundle reproduces its manifest's {prec} top-1 "
                        f"{o.manifest_top1:.4f} with the device runtime"))
    else:
        out.append(gate("verify", o.verified_top1, o.manifest_top1, False,
                        f"target '{target}' failed gate verify: the written bundle scores top-1 {o.verified_top1:.4f} "
                        f"with the device runtime, its manifest says {o.manifest_top1:.4f}; delete the build cache "
                        "entry and rebuild, and report it if it persists"))
    drop = (o.fp32_top1 - o.top1) * 100.0
    lim = spec.max_drop_pts
    ok = drop <= lim.value + 1e-9
    out.append(gate("max_drop_pts", round(drop, 4), lim.value, ok,
                    f"target '{target}' {'passed' if ok else 'failed'} gate max_drop_pts: {prec} top-1 "
                    f"{o.top1:.2%} is {_pts(drop)} points below FP32 {o.fp32_top1:.2%} on the validation split "
                    f"(limit {_pts(lim.value)} points, {lim.source})", lim.source))
    for task, (fp32, quant) in sorted((o.extra.get("tasks") or {}).items()):  # each extra head, same limit
        tdrop = (fp32 - quant) * 100.0
        ok = tdrop <= lim.value + 1e-9
        out.append(gate(f"max_drop_pts[{task}]", round(tdrop, 4), lim.value, ok,
                        f"target '{target}' {'passed' if ok else 'failed'} gate max_drop_pts for task '{task}': "
                        f"{prec} top-1 {quant:.2%} is {_pts(tdrop)} points below FP32 {fp32:.2%} on the validation "
                        f"split (limit {_pts(lim.value)} points, {lim.source})", lim.source))
    floor = spec.min_top1
    if floor.value is None:
        out.append(gate("min_top1", o.top1, None, True, f"target '{target}': no min_top1 set (gates.min_top1)",
                        skipped=True))
    else:
        ok = o.top1 >= floor.value - 1e-12
        out.append(gate("min_top1", o.top1, floor.value, ok,
                        f"target '{target}' {'passed' if ok else 'failed'} gate min_top1: {prec} top-1 {o.top1:.2%} "
                        f"on the validation split {'>=' if ok else '<'} {floor.value:.2%} ({floor.source})",
                        floor.source))
    budget = spec.latency_budget_ms
    if o.latency_ms is None:
        out.append(gate("latency_budget_ms", None, budget.value, False,
                        f"target '{target}' failed gate latency_budget_ms: no latency was measured"))
    else:
        ok = o.latency_ms <= budget.value
        where = "on this host, not the board" if o.source == "host" else "on the device"
        out.append(gate("latency_budget_ms", round(o.latency_ms, 4), budget.value, ok,
                        f"target '{target}' {'passed' if ok else 'failed'} gate latency_budget_ms: {o.source} median "
                        f"{o.latency_ms:.2f} ms ({where}) {'<=' if ok else '>'} budget {budget.value:g} ms "
                        f"({budget.source})", budget.source))
    return out


def _selection_checks(spec: TargetSpec, o: Option) -> str | None:
    """Why `o` is ruled out before accuracy is compared, or None."""
    if o.error:
        return f"export failed: {o.error}"
    if not o.reproduced:
        return "its bundle does not reproduce its manifest's top-1 (gate verify)"
    if o.latency_ms is None:
        return "no latency measured"
    budget = spec.latency_budget_ms.value
    if o.latency_ms > budget:
        return (f"over budget by {o.latency_ms - budget:.2f} ms ({o.source} median {o.latency_ms:.2f} ms > "
                f"{budget:g} ms)")
    split = o.selection_split
    if o.fp32_selection_top1 is not None and o.selection_top1 is not None:
        drop = (o.fp32_selection_top1 - o.selection_top1) * 100.0
        # The split cannot resolve less than one image: hymenoptera's selection split is 37
        # images (2.7 points each), where a 1-point limit ruled out every INT8 candidate on
        # a single image. On the selection split the limit is at least one image's worth.
        one_image = 100.0 / o.selection_n if o.selection_n else 0.0
        limit = max(spec.max_drop_pts.value, one_image)
        if drop > limit + 1e-9:
            return (f"failed gate max_drop_pts on the {split} split: {o.precision.upper()} top-1 "
                    f"{o.selection_top1:.2%} is {_pts(drop)} points below FP32 {o.fp32_selection_top1:.2%} "
                    f"(limit {_pts(limit)}{', one image' if limit > spec.max_drop_pts.value else ''})")
    if spec.min_top1.value is not None and o.selection_top1 is not None and o.selection_top1 < spec.min_top1.value:
        return (f"failed gate min_top1 on the {split} split: top-1 {o.selection_top1:.2%} < "
                f"{spec.min_top1.value:.2%}")
    return None


def select(spec: TargetSpec, options: list[Option]) -> tuple[Option | None, list[dict]]:
    """Pick one candidate for a target (see the module docstring).

    Returns:
        (the chosen Option or None when no candidate exported, the selection list: one entry
        per candidate with candidate, top1 (validation, reported), selection_top1, split,
        latency_ms, latency_source, kept, why).
    """
    ruled = {o.candidate: _selection_checks(spec, o) for o in options}
    eligible = [o for o in options if ruled[o.candidate] is None]

    def rank(o: Option):
        return (o.selection_top1 if o.selection_top1 is not None else -1.0, -(o.latency_ms or 0.0))

    exported = [o for o in options if not o.error]
    fallback = ""
    if eligible:
        chosen = max(eligible, key=rank)
    elif exported:
        in_budget = [o for o in exported if o.latency_ms is not None
                     and o.latency_ms <= spec.latency_budget_ms.value and o.reproduced]
        if in_budget:
            chosen = max(in_budget, key=rank)
            fallback = "no candidate passes every check; the most accurate within the budget is kept (its gates decide)"
        else:
            measured = [o for o in exported if o.latency_ms is not None] or exported
            chosen = min(measured, key=lambda o: o.latency_ms if o.latency_ms is not None else float("inf"))
            fallback = "no candidate fits the latency budget; the fastest is kept (its gates decide)"
    else:
        chosen = None

    entries = []
    for o in options:
        kept = chosen is not None and o.candidate == chosen.candidate
        if kept:
            why = fallback or (f"most accurate on the {o.selection_split} split within the budget"
                               f" ({o.source} median {o.latency_ms:.2f} ms <= {spec.latency_budget_ms.value:g} ms)")
            if ruled[o.candidate] and fallback:
                why += f"; {ruled[o.candidate]}"
        elif ruled[o.candidate]:
            why = ruled[o.candidate]
        else:
            gap = ((chosen.selection_top1 or 0.0) - (o.selection_top1 or 0.0)) * 100.0
            if gap > 1e-9:
                why = f"less accurate than {chosen.candidate} by {_pts(gap)} points on the {o.selection_split} split"
            else:
                why = (f"as accurate as {chosen.candidate} on the {o.selection_split} split but slower by "
                       f"{(o.latency_ms or 0) - (chosen.latency_ms or 0):.2f} ms")
        entries.append({"candidate": o.candidate, "top1": o.top1, "selection_top1": o.selection_top1,
                        "split": o.selection_split, "latency_ms": o.latency_ms, "latency_source": o.source,
                        "kept": kept, "why": why})
    return chosen, entries


def pareto(options: list[Option], chosen: Option | None) -> dict:
    """Accuracy vs latency of every candidate for one target, the non-dominated ones marked
    (lower latency and higher reported top-1 are better): the data of the report's plot."""
    pts = [o for o in options if not o.error and o.latency_ms is not None and o.top1 is not None]
    points = []
    for o in options:
        if o not in pts:
            continue
        dominated = any(p is not o and p.latency_ms <= o.latency_ms and p.top1 >= o.top1
                        and (p.latency_ms < o.latency_ms or p.top1 > o.top1) for p in pts)
        points.append({"candidate": o.candidate, "latency_ms": o.latency_ms, "latency_source": o.source,
                       "top1": o.top1, "selection_top1": o.selection_top1, "front": not dominated,
                       "chosen": chosen is not None and o.candidate == chosen.candidate})
    return {"x": "latency_ms", "y": "top1", "y_split": "val", "points": points}
