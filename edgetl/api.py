"""The public Python API behind `edgetl.finetune`, `edgetl.export` and `edgetl.open_bundle`
(host side: fine-tuning and export import torch when called, not when imported)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from edgetl.bundle import Bundle
from edgetl.core.progress import ProgressCallback, reporting
from edgetl.errors import EdgetlError


@dataclass(frozen=True)
class Run:
    """A fine-tuned run folder: model.pt, labels.txt, metrics.json, training_curve.png."""

    path: Path
    metrics: dict
    labels: list[str]

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """Read a run folder's labels and metrics (the model loads only when exported)."""
        path = Path(path)
        metrics_path = path / "metrics.json"
        if not (path / "model.pt").is_file() or not metrics_path.is_file():
            raise EdgetlError(f"'{path}' is not a complete run (model.pt and metrics.json); run finetune into it")
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        return cls(path, metrics, list(metrics.get("data", {}).get("labels") or []))


def _config(cls, options: dict, what: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise EdgetlError(f"{what} has no option {', '.join(map(repr, unknown))}; its options are: "
                          f"{', '.join(sorted(known))}")
    return cls(**options)


def finetune(data: str | Path, out: str | Path, *, progress: ProgressCallback | None = None, **options) -> Run:
    """Fine-tune a pretrained backbone on a folder of images.

    Args:
        data: `DATA/train/<class>/*` + `DATA/val/<class>/*`, or `DATA/<class>/*` (split here).
        out: the run folder to write (model.pt, labels.txt, metrics.json, training_curve.png).
        progress: called as progress(description, done, total) during long stages.
        **options: any field of `edgetl.transfer.FinetuneConfig` (backbone, strategy, epochs, seed, ...).

    Returns:
        Run with `.path`, `.metrics` (top1, balanced_accuracy, per_class, ...) and `.labels`.

    Raises:
        EdgetlError: an unknown option or value, unreadable data, missing weights.
    """
    from edgetl.transfer import FinetuneConfig
    from edgetl.transfer.run import finetune as run_finetune

    cfg = _config(FinetuneConfig, options, "finetune")
    with reporting(progress):
        metrics = run_finetune(data, out, cfg)
    return Run(Path(out), metrics, list(metrics["data"]["labels"]))


def export(run: str | Path | Run, target: str, out: str | Path, precision: str | None = None, *,
           progress: ProgressCallback | None = None, **options):
    """Export a run as a bundle for one target, scored with the device runtime and gated.

    Args:
        run: a run folder (or a Run).
        target: a target name (see `edgetl targets`) or a target YAML path.
        out: the bundle folder to write: new, empty, or an earlier bundle (never a folder of other files).
        precision: fp32, fp16 or int8; None: the target's default.
        progress: called as progress(description, done, total) during long stages.
        **options: any field of `edgetl.exporter.ExportConfig` (calib, calib_recipe, val, fused).

    Returns:
        ExportResult: `.bundle` (path), `.metrics`, `.manifest`, `.passed` (False when the
        quantized model misses the target's accuracy tolerance; the bundle is written anyway)
        and `.message` (why).

    Raises:
        EdgetlError: a refused precision, an unknown option, a destination that is not a bundle.
    """
    from edgetl.exporter import ExportConfig, export_run

    cfg = _config(ExportConfig, {**options, "precision": precision}, "export")
    with reporting(progress):
        return export_run(run.path if isinstance(run, Run) else run, target, out, cfg)


def open_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open and verify a bundle (torch-free): labels, preprocessing, model file, heads, reference set.

    Args:
        path: the bundle folder.
        verify: check every file's sha256.

    Returns:
        edgetl.bundle.Bundle.

    Raises:
        BundleError: not a bundle, edited, truncated or tampered; the message names the file.
    """
    return Bundle.open(path, verify=verify)
