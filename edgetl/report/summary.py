"""summary.json of `edgetl build`: one JSON document every report is drawn from (report.md,
junit.xml, report.html) and a CI job or a dashboard reads.

    {"schema": 1, "passed": bool,
     "targets": {NAME: {"passed", "candidate", "precision", "bundle", "format", "metrics": {"fp32": {...},
                        "<precision>": {...}}, "size_bytes", "latency_ms": {"host": {...}, "device": {...}},
                        "latency_budget_ms", "calibration", "bundle_sha256", "gates": [...],
                        "selection": [...], "selection_split": {...}, "pareto": {...}}},
     "candidates": [...], "stages": [...], "versions": {...}, ...}

Accuracies are fractions in [0, 1] on the run's validation split (reported, never used for a
decision); host latency is labelled "host" everywhere, board latency "device".
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

from edgetl.core.fsutil import atomic_write_json

log = logging.getLogger("edgetl")

SUMMARY_SCHEMA = 1
SELECTION_POLICY = ("per target: among candidates within the latency budget that pass the accuracy gates on the "
                    "selection split (training-side images fine-tuning held out), the most accurate on that split; "
                    "ties go to the faster. Gates are then applied to the chosen bundle on the validation split.")


def _bundle_bytes(folder: Path | None) -> int | None:
    if folder is None or not folder.is_dir():
        return None
    from edgetl.bundle.manifest import Manifest

    m = Manifest.read(folder)
    return sum((folder / name).stat().st_size for name in m.files) + (folder / "manifest.json").stat().st_size


def recovery_summary(record: dict | None) -> dict | None:
    """What the report says of export's recovery ladder (edgetl/recovery.py; the manifest keeps
    the whole record): the step that won, what it changed and cost, or that none passed."""
    if not record:
        return None
    tried = [s["step"] for s in record.get("steps", []) if "skipped" not in s]
    winner = record.get("winner")
    row = next((s for s in record.get("steps", []) if s["step"] == winner and s.get("passed")), None)
    out = {"winner": winner, "tried": tried, "trigger_drop_pts": (record.get("trigger") or {}).get("drop_pts")}
    if row is not None:
        out.update(name=row.get("name"), what=row.get("what"), drop_pts=row.get("drop_pts"),
                   float_blocks=row.get("float_blocks"), size_bytes=row.get("size_bytes"))
    cost = record.get("latency_cost")
    if cost:
        out["latency_ratio"] = cost.get("ratio")
    return out


def recovery_text(rec: dict | None) -> str | None:
    """One sentence for the reports from `recovery_summary`'s dict, or None without a ladder."""
    if not rec:
        return None
    if not rec.get("winner"):
        return f"no recovery step passed the gate (tried {', '.join(rec['tried']) or 'none'})"
    cost = f", latency x{rec['latency_ratio']:.2f}" if rec.get("latency_ratio") else ", same latency"
    return (f"step {rec['winner']} ({rec.get('what') or rec.get('name')}) recovered a "
            f"{rec['trigger_drop_pts']:.2f}-point drop to {rec['drop_pts']:.2f}{cost}")


def target_entry(spec, chosen, gates: list[dict], selection: list[dict], pareto: dict, *, manifest, verify, host,
                 device, candidate, bundle_dir: Path | None) -> dict:
    """One target's block of summary.json (see the module docstring).

    Args:
        spec: the TargetSpec.
        chosen: the selected Option, or None when no candidate exported.
        gates, selection, pareto: from edgetl.build.select.
        manifest: the chosen bundle's Manifest; verify, host: its verify and benchmark stage
            results; device: its --device-results record or None.
        candidate: the chosen Candidate; bundle_dir: OUT/<target>.
    """
    entry = {
        "passed": all(g["passed"] for g in gates),
        "candidate": chosen.candidate if chosen else None,
        "precision": spec.precision,
        "bundle": spec.name if chosen else None,
        "latency_budget_ms": spec.latency_budget_ms.value,
        "limits": {"latency_budget_ms": vars(spec.latency_budget_ms), "max_drop_pts": vars(spec.max_drop_pts),
                   "min_top1": vars(spec.min_top1)},
        "gates": gates,
        "selection": selection,
        "pareto": pareto,
    }
    if chosen is None or manifest is None:
        return entry
    m = manifest.metrics
    precisions = list(dict.fromkeys(["fp32", manifest.precision]))
    metrics = {}
    for p in precisions:
        metrics[p] = {k: v for k, v in m[p].items() if k != "latency_ms"}
        metrics[p].setdefault("labels", list(manifest.labels))
    metrics["split"] = {"name": "val", **{k: v for k, v in (m.get("val") or {}).items() if k != "digest"}}
    latency = {}
    if host is not None:
        h = host.record
        latency["host"] = {k: h[k] for k in ("median", "p90", "mean", "min", "max", "threads", "runs", "warmup",
                                             "backend", "preprocess_ms") if k in h}
        latency["host"]["machine"] = h.get("machine")
        latency["host"]["target_threads"] = h.get("target_threads")
    if device is not None:
        latency["device"] = {k: device.get(k) for k in ("median", "p90", "threads", "runs", "backend", "machine",
                                                        "file")}
    v = verify.record if verify is not None else {}
    entry.update({
        "backbone": candidate.backbone if candidate else None,
        "input_size": manifest.preprocess.get("size"),
        "format": manifest.format,
        "backend": manifest.backend,
        "metrics": metrics,
        "export_gate": m.get("gate"),
        "tasks": {name: {p: {"top1": t[p]["top1"]} for p in precisions}
                  for name, t in (m.get("tasks") or {}).items()} or None,
        "size_bytes": {**m.get("size_bytes", {}), "bundle": _bundle_bytes(bundle_dir)},
        "latency_ms": latency,
        "latency_source": "device" if device is not None else "host",
        "calibration": manifest.calibration,
        "recovery": recovery_summary(manifest.extra.get("recovery")),
        "bundle_sha256": v.get("bundle_sha256"),
        "verify": {"backend": v.get("backend"), "threads": v.get("threads"), "top1": (v.get("val") or {}).get("top1"),
                   "manifest_top1": v.get("manifest_top1"), "reproduced": v.get("reproduced")},
        "selection_split": {"split": v.get("selection_split"),
                            "n": (v.get("selection") or v.get("val") or {}).get("n"),
                            "note": ("bundles scored on the runs' selection split (training-side, held out by "
                                     "finetune); the validation split is only reported"
                                     if v.get("selection_split") == "selection" else
                                     "the runs record no selection split (written before it existed): selection "
                                     "used the validation split, so the reported accuracy is optimistic")},
    })
    return entry


def versions() -> dict:
    from importlib import metadata

    import edgetl

    out = {"edgetl": edgetl.__version__, "python": platform.python_version()}
    for name in ("torch", "timm", "numpy", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "onnx",
                 "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def assemble(project, out: Path, data_digest: str, targets: dict, fts: dict, stages: list, cache_root: Path,
             device_files, seconds: float, ranking: list[dict] | None = None) -> dict:
    """The whole summary.json document; `ranking` lists every candidate ranked for `keep_top`
    (kept or not), `candidates` only those fine-tuned."""
    candidates = []
    for cand in project.candidates:
        ft = fts[cand.name]
        rec = ft.record
        candidates.append({"name": cand.name, "backbone": cand.backbone, "input_size": cand.input_size,
                           "strategy": rec.get("strategy"), "top1": rec.get("top1"),
                           "balanced_accuracy": rec.get("balanced_accuracy"),
                           "selection": rec.get("selection"), "seconds": rec.get("seconds"), "reused": ft.reused,
                           "options": rec.get("options"), "adaptation": rec.get("adaptation")})
    return {
        "schema": SUMMARY_SCHEMA,
        "passed": all(t["passed"] for t in targets.values()),
        "project": str(project.path),
        "out": str(out),
        "data": {"path": str(project.data), "digest": data_digest},
        "adapt": None if project.adapt is None else {"target_images": str(project.adapt.target_images),
                                                     "method": project.adapt.method},
        "targets": targets,
        "candidates": candidates,
        "keep_top": project.keep_top,
        "ranking": ranking,
        "selection_policy": SELECTION_POLICY,
        "stages": [s.to_summary() for s in stages],
        "reused": {"stages": len(stages), "reused": sum(1 for s in stages if s.reused)},
        "cache": str(cache_root),
        "device_results": [str(p) for p in device_files],
        "versions": versions(),
        "seconds": round(seconds, 2),
    }


def write_summary(summary: dict, path: Path) -> Path:
    atomic_write_json(path, summary)
    return path


def write_reports(summary: dict, out: Path) -> list[Path]:
    """summary.json, report.md, junit.xml, and report.html when edgetl.report.html is installed."""
    from edgetl.report.junit import write_junit
    from edgetl.report.markdown import write_markdown

    files = [write_summary(summary, out / "summary.json"), write_markdown(summary, out / "report.md"),
             write_junit(summary, out / "junit.xml")]
    try:
        from edgetl.report.html import write_html
    except ImportError:
        log.info("report.html skipped: edgetl.report.html is not available in this edgetl")
    else:
        files.append(write_html(summary, out / "report.html"))
    return files
