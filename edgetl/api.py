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


def finetune(data: str | Path, out: str | Path, *, target_images: str | Path | None = None, adapt: str | None = None,
             tasks: dict[str, str | Path] | None = None, task_weights: dict[str, float] | None = None,
             progress: ProgressCallback | None = None, **options) -> Run:
    """Fine-tune a pretrained backbone on a folder of images (and adapt it to field images).

    Args:
        data: `DATA/train/<class>/*` + `DATA/val/<class>/*`, or `DATA/<class>/*` (split here).
        out: the run folder to write (model.pt, labels.txt, metrics.json, training_curve.png).
        target_images: a folder of unlabeled field images: the fine-tuned run is then adapted
            to them (`edgetl.adapt.adapt_run`) and `out` holds the adapted run, with the
            fine-tune's own validation figures under metrics.json `unadapted`.
        adapt: the adaptation method with target_images: align, coral, adabn, dann, selftrain or auto
            (default auto).
        tasks: extra tasks on the same backbone, name -> CSV of `file,label` rows (file relative
            to `data`) or a folder laying the same images out as FOLDER/<label>/<image>
            (matched by content); the class folders stay the primary task ("default"). One head per
            task is fitted on the run's backbone (edgetl/multitask.py) and metrics.json
            reports each task (`tasks`).
        task_weights: task name (or "default") -> loss weight, above 0 (default 1).
        progress: called as progress(description, done, total) during long stages.
        **options: any field of `edgetl.transfer.FinetuneConfig` (backbone, strategy, epochs, seed, ...).

    Returns:
        Run with `.path`, `.metrics` (top1, balanced_accuracy, per_class, ...) and `.labels`.

    Raises:
        EdgetlError: an unknown option or value, unreadable data, missing weights; `adapt`
            without `target_images`; a task CSV lacking a label for an image of the data.
    """
    from edgetl.transfer import FinetuneConfig
    from edgetl.transfer.run import finetune as run_finetune

    cfg = _config(FinetuneConfig, options, "finetune")
    if adapt is not None and target_images is None:
        raise EdgetlError(f"adapt '{adapt}' needs target_images (--target-images DIR): the folder of unlabeled field "
                          "images to adapt to. Pass it, or drop adapt (--adapt)")
    specs = []
    if tasks or task_weights:
        from edgetl import multitask

        if target_images is not None:
            raise EdgetlError("tasks (--task) and target_images (--target-images) together are not supported yet: the "
                              "adaptation changes only the primary head. Fine-tune with the tasks, then run "
                              "`edgetl adapt` on the default task, or drop one of them")
        specs = multitask.load_tasks(tasks or {}, task_weights, data)
        files = multitask.image_files(data)
        for spec in specs:  # before the slow part: every image the run may use needs a label
            multitask.require_labels(spec, files, f"images under '{data}'")
    with reporting(progress):
        if target_images is not None:
            from edgetl.adapt import finetune_adapted

            return finetune_adapted(data, out, cfg, target_images, adapt or "auto")
        metrics = run_finetune(data, out, cfg, tuple(specs), (task_weights or {}).get("default", 1.0))
        from edgetl.transfer.distributed import launched_rank

        if specs and launched_rank() == 0:  # under torchrun: once, by the rank that wrote the run
            multitask.fit_task_heads(out, specs, cfg, (task_weights or {}).get("default", 1.0))
            metrics = json.loads((Path(out) / "metrics.json").read_text(encoding="utf-8"))
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
