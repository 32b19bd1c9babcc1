"""`edgetl export`: a run -> a per-target bundle, scored with the device runtime and gated.

The stages, top to bottom (each a function below):
    plan      resolve target, format, precision (refused with the hardware's reason) and recipe
    convert   the FP32 backbone in the target's format
    quantize  the asked precision from it (calibrated on training-side images; an adapted run: its field images)
    validate  the artifact is what the precision promises (format's own checks)
    score     FP32 and quantized top-1 on the run's validation split, with the device runtime
              (a multi-task run's extra heads on the same embeddings)
    gate      the target's accuracy tolerance, for every task: a verdict in the result, not an exception
    write     BundleWriter: staged files + typed Manifest, swapped into place
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

import edgetl
from edgetl.backends import Backbone, open_backend
from edgetl.bundle import Bundle, BundleWriter, Head, Manifest
from edgetl.bundle.writer import check_destination
from edgetl.core.fsutil import sha256_file
from edgetl.core.images import scan_images
from edgetl.core.options import opt
from edgetl.errors import EdgetlError
from edgetl.formats import ExportRequest, Format, format_for
from edgetl.quantize.recipes import CalibrationRecipe, load_recipe, select_calibration_images, select_stratified
from edgetl.runtime.evaluate import embed_paths, labelled_images, metrics_from_embeddings
from edgetl.runtime.predictor import Predictor
from edgetl.targets import Target, load_target

log = logging.getLogger("edgetl")

REFERENCE_MAX = 400  # reference embeddings kept for the on-device guardrail


@dataclass(frozen=True)
class ExportConfig:
    """Export options: what `edgetl export` parses (its options are generated from these
    fields) and `edgetl.export(...)` takes."""

    precision: str | None = opt(None, "Default: the target's.", choices=("int8", "fp16", "fp32"))
    calib: str | None = opt(None, "Calibration images (default: an adapted run's field images, else the run's "
                                  "training split).")
    calib_recipe: str | None = opt(None, "Calibration recipe name or YAML path (default: the target's).")
    val: str | None = opt(None, "Validation class folders (default: the run's validation split).")
    fused: bool = opt(False, "Also write a single-file model (image -> logits).")
    recover: str = opt("auto", "When the quantized model fails the accuracy gate, try the recovery steps "
                               "(head refit, calibration, float blocks, int16 activations; edgetl/recovery.py).",
                       choices=("auto", "off"))


@dataclass(frozen=True)
class ExportResult:
    """What an export produced. A failed accuracy gate is a verdict here (`passed` False),
    not an exception; the bundle and its metrics are written either way."""

    bundle: Path
    manifest: Manifest
    passed: bool
    message: str = ""  # why the gate failed, with the numbers

    @property
    def metrics(self) -> dict:
        return self.manifest.metrics

    @property
    def gate(self) -> dict | None:
        return self.manifest.metrics.get("gate")


@dataclass
class _Plan:
    run_dir: Path
    run: object
    target: Target
    fmt: Format
    precision: str
    recipe: CalibrationRecipe
    val_paths: list
    val_y: list
    train_paths: list
    train_y: list
    val_info: dict
    calib_info: dict = field(default_factory=dict)


# -- plan -----------------------------------------------------------------------------------
def _versions(fmt: Format) -> dict:
    def v(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    converter = {"tflite": ["litert-torch", "ai-edge-quantizer"], "tensorrt": ["onnx", "onnxruntime"]}.get(fmt.name, [])
    runtime = {"tflite": ["ai-edge-litert"], "onnxruntime": ["onnxruntime"],
               "tensorrt": ["onnxruntime"]}.get(fmt.backend, [])
    return {"edgetl": edgetl.__version__, "torch": v("torch"), "timm": v("timm"),
            "converter": {p: v(p) for p in converter}, "runtime": {p: v(p) for p in runtime}}


def dataset_digest(root: Path, files: list[str]) -> str:
    """Names the validation set by content and layout, not by a host path."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\t{sha256_file(root / rel)}\n".encode())
    return h.hexdigest()


def _validation_data(run_dir: Path, labels: list[str], val: Path | None):
    """(val paths, val labels, train paths, train labels, description) for this run."""
    if val is not None:
        paths, y, _ = labelled_images(val, labels)
        return paths, y, [], [], {"source": "folder given at export", "n": len(paths)}
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise EdgetlError(f"'{metrics_path}' is missing: the run is incomplete (finetune was interrupted?); "
                          "re-run finetune, or pass val (class folders) to evaluate on")
    try:
        record = json.loads(metrics_path.read_text(encoding="utf-8")).get("data") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise EdgetlError(f"'{metrics_path}' is unreadable ({exc}); re-run finetune") from None
    if not record.get("val_files"):
        raise EdgetlError(f"'{metrics_path}' records no validation split; pass val (class folders) "
                          "to evaluate the exported model")
    from edgetl.data import split_from_record

    split = split_from_record(record)
    if list(split.labels) != list(labels):
        raise EdgetlError(f"'{metrics_path}' lists labels {split.labels} but the run has {labels}; re-run finetune")
    val_paths, val_y = zip(*split.val)
    train = list(zip(*split.train)) if split.train else [(), ()]
    info = {"source": "run validation split", "layout": record.get("layout"), "seed": record.get("seed"),
            "val_split": record.get("val_split"), "n": len(val_paths),
            "digest": dataset_digest(split.root, record["val_files"])}
    return list(val_paths), list(val_y), list(train[0]), list(train[1]), info


def plan(run_dir: Path, target_name: str, cfg: ExportConfig) -> _Plan:
    from edgetl.model import load_run

    run = load_run(run_dir)
    target = load_target(target_name)
    fmt = format_for(target.runtime)
    precision = cfg.precision or target.default_precision
    why = fmt.refusal(target, precision)
    if why:
        raise EdgetlError(f"{why} ({target.path})")
    if precision not in target.precisions:
        raise EdgetlError(f"target '{target.name}' ({target.path}) allows precisions {list(target.precisions)}, "
                          f"not '{precision}'; pick one of those as precision")
    recipe = load_recipe(cfg.calib_recipe or target.calibration)
    val = _validation_data(run_dir, list(run.labels), Path(cfg.val) if cfg.val else None)
    return _Plan(run_dir, run, target, fmt, precision, recipe, *val)


# -- convert, quantize, validate ---------------------------------------------------------------
def _recorded_calibration(run_dir: Path) -> Path | None:
    """The folder an adapted run names for calibration (metrics.json `calibration_images`, its
    field images: the activations the INT8 ranges must cover there), or None."""
    try:
        folder = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("calibration_images")
    except (OSError, ValueError, AttributeError):
        return None
    if not folder:
        return None
    if not Path(folder).is_dir():
        raise EdgetlError(f"'{run_dir / 'metrics.json'}' names calibration_images '{folder}' (the field images it was "
                          "adapted to), which is no longer a folder; pass calib (--calib DIR) with images from that "
                          "camera")
    return Path(folder)


def _calibration(p: _Plan, calib: Path | None, preprocess, recipe: CalibrationRecipe | None = None) -> list[np.ndarray]:
    recorded = _recorded_calibration(p.run_dir) if calib is None else None
    if calib is not None or recorded is not None:
        folder = calib or recorded
        pool, _ = scan_images(folder)
        if not pool:
            raise EdgetlError(f"calibration folder '{folder}' holds no readable images")
        # Stratify by the first folder under it when there are class folders.
        groups = [q.relative_to(folder).parts[0] if len(q.relative_to(folder).parts) > 1 else "" for q in pool]
        source = "calibration folder given at export" if calib is not None else \
            "adapted run's field images (metrics.json calibration_images)"
    elif p.train_paths:
        pool, groups, source = p.train_paths, p.train_y, "run training split"
    else:
        raise EdgetlError("INT8 needs calibration images: the run records no training files; pass calib (a folder)")
    recipe = recipe or p.recipe
    chosen = select_calibration_images(pool, groups, recipe)
    p.calib_info.update({"source": source, "pool": len(pool)})
    log.info("calibrating on %d images from the %s (recipe '%s', method %s)", len(chosen), source, recipe.name,
             recipe.method)
    return [preprocess.batch([q]) for q in chosen]


def convert_and_quantize(p: _Plan, w: BundleWriter, cfg: ExportConfig, preprocess) -> dict:
    """FP32 artifact, then the asked precision from it; each validated. Returns their facts."""
    fmt, target = p.fmt, p.target

    def request(module, prec: str, base: Path | None = None) -> ExportRequest:
        return ExportRequest(module=module, size=preprocess.size, layout=target.layout, precision=prec,
                             recipe=p.recipe, calibration=lambda: _calibration(p, Path(cfg.calib) if cfg.calib else None,
                                                                              preprocess),
                             threads=min(target.threads, 2), base=base, target=target)

    backbone_file = f"backbone{fmt.suffix}"
    fp32_file = backbone_file if p.precision == "fp32" else f"backbone.fp32{fmt.suffix}"
    log.info("exporting %s FP32 (%s) for target '%s'", p.run.spec.name, fmt.name, target.name)
    fp32 = fmt.export(request(p.run.backbone, "fp32"), w.path(fp32_file))
    facts = fmt.validate(fp32.path, "fp32")
    out = {"backbone_file": backbone_file, "fp32": fp32, "fp32_size": facts["size_bytes"],
           "exported": fp32, "facts": facts}
    if p.precision != "fp32":
        log.info("quantizing to %s", p.precision.upper())
        exported = fmt.export(request(p.run.backbone, p.precision, base=fp32.path), w.path(backbone_file))
        out.update(exported=exported, facts=fmt.validate(exported.path, p.precision))
    out["request"] = request
    return out


# -- score, gate ---------------------------------------------------------------------------
def score(p: _Plan, stage: Path, manifest: Manifest, head: Head, model_file: str, io: dict,
          description: str, backend: str) -> tuple[dict, np.ndarray]:
    """Top-1 etc. of one staged artifact on the validation split, with the device runtime."""
    predictor = staged_predictor(p, stage, manifest, head, model_file, io, backend)
    embeddings, seconds = embed_paths(predictor, p.val_paths, description=description)
    return metrics_from_embeddings(predictor, embeddings, p.val_y, seconds), embeddings


def staged_predictor(p: _Plan, stage: Path, manifest: Manifest, head: Head, model_file: str, io: dict,
                     backend: str) -> Predictor:
    """A staged model file (relative to `stage`) with `head`, on the device runtime."""
    model = {**manifest.model, "file": model_file, **io}
    # Not yet a bundle on disk: the manifest lists just this file, with its real digest.
    staged = Bundle(stage, manifest.replace(model=model, files={model_file: sha256_file(stage / model_file)}))
    threads = min(p.target.threads, os.cpu_count() or 1)
    backbone = Backbone(staged.preprocess, open_backend(backend, stage / model_file, model, threads),
                        manifest.embedding_dim, model["input"]["shape"])
    return Predictor(staged, backbone, head=head)


def gate(metrics: dict, precision: str, target: Target) -> dict:
    fp32, quant = metrics["fp32"]["top1"], metrics[precision]["top1"]
    drop = (fp32 - quant) * 100.0
    return {"quantized": precision, "drop_pts": drop, "tolerance_pts": target.accuracy_tolerance_pts,
            "passed": drop <= target.accuracy_tolerance_pts}


def _task_heads(run) -> dict[str, Head]:
    """The run's extra tasks (edgetl/multitask.py) as float32 heads, in the run's order."""
    return {name: Head(t.weight.detach().cpu().numpy().astype(np.float32),
                       t.bias.detach().cpu().numpy().astype(np.float32), tuple(t.labels))
            for name, t in run.tasks.items()}


def _score_tasks(p: _Plan, heads: dict[str, Head], fp32_embeddings: np.ndarray,
                 embeddings: np.ndarray) -> tuple[dict, dict[str, list[int]]]:
    """Each extra task's FP32 and quantized metrics from the validation embeddings the export
    already computed (a head is one matmul: no image is embedded again), and each scored
    task's class index per validation image."""
    from edgetl.core.metrics import classification_metrics
    from edgetl.multitask import task_labels

    truth = task_labels(p.run_dir) if p.val_info.get("source") == "run validation split" else {}
    out, ys = {}, {}
    for name, head in heads.items():
        if name not in truth or any(Path(path) not in truth[name] for path in p.val_paths):
            out[name] = {"not_scored": "the task's labels are known for the run's validation split only (metrics.json "
                                       "tasks.<name>.val_labels); export without val to score and gate it"}
            continue
        index = {label: i for i, label in enumerate(head.labels)}
        y = ys[name] = [index[truth[name][Path(path)]] for path in p.val_paths]
        out[name] = {"fp32": classification_metrics(y, head.predict(fp32_embeddings), list(head.labels))}
        if p.precision != "fp32":
            out[name][p.precision] = classification_metrics(y, head.predict(embeddings), list(head.labels))
    return out, ys


def _refit_tasks(p: _Plan, w: BundleWriter, manifest: Manifest, exported, heads: dict[str, Head], metrics: dict,
                 truth: dict[str, list[int]], embeddings: np.ndarray, host_backend: str) -> None:
    """Recovery step a (edgetl/recovery.py) for each extra task that fails the gate: its head
    re-fitted on the shipped quantized backbone's embeddings of the training images, anchored
    to its FP32 head; the L2 strength and the stopping step are chosen on the selection slice.
    As the ladder does, the refit replaces the head (in `heads`, `metrics` and its staged file)
    only when it passes the gate; `metrics["tasks"][task]["refit"]` records it either way."""
    from edgetl.core.metrics import classification_metrics
    from edgetl.multitask import task_labels
    from edgetl.recovery import refit_head, training_side

    fit_paths, _, sel_paths, _, source = training_side(p)
    known = task_labels(p.run_dir, "train")
    for name, by_file in task_labels(p.run_dir, "selection").items():
        known[name] = {**known.get(name, {}), **by_file}
    rel = Path(exported.path).relative_to(w.stage).as_posix()
    predictor = staged_predictor(p, w.stage, manifest, next(iter(heads.values())), rel, exported.io, host_backend)
    fit_emb = sel_emb = None
    for name in metrics["gate"]["failed_tasks"]:
        head, by_file = heads[name], known.get(name, {})
        if not sel_paths or any(Path(q) not in by_file for q in [*fit_paths, *sel_paths]):
            metrics["tasks"][name]["refit"] = {"skipped": "the run records no training-side labels for this task"}
            continue
        if fit_emb is None:  # once for every failing task: the same images, the same backbone
            fit_emb = embed_paths(predictor, fit_paths, description="recovery: embedding training images")[0]
            sel_emb = embed_paths(predictor, sel_paths, description="recovery: embedding the slice")[0]
        index = {label: i for i, label in enumerate(head.labels)}
        fit_y = np.asarray([index[by_file[Path(q)]] for q in fit_paths])
        sel_y = np.asarray([index[by_file[Path(q)]] for q in sel_paths])
        new, l2, r = refit_head(head, fit_emb, fit_y, sel_emb, sel_y)
        scored = classification_metrics(truth[name], new.predict(embeddings), list(head.labels))
        drop = (metrics["tasks"][name]["fp32"]["top1"] - scored["top1"]) * 100.0
        passed = drop <= p.target.accuracy_tolerance_pts
        metrics["tasks"][name]["refit"] = {"l2": l2, "best_step": r.best_step, "slice_loss": round(r.val_loss, 5),
                                           "slice": source, "fit_images": len(fit_y), "top1": scored["top1"],
                                           "drop_pts": round(drop, 4), "kept": passed}
        log.info("recovery a (head refit) of task '%s': top1 %.4f, drop %.2f pts -> %s", name, scored["top1"], drop,
                 "pass" if passed else "fail")
        if passed:
            heads[name] = new
            metrics["tasks"][name][p.precision] = scored
            np.savez(w.path(f"head.{name}.npz"), weight=new.weight, bias=new.bias)


def _gate_tasks(default_gate: dict, tasks: dict, precision: str, target: Target) -> dict:
    """The gate over every task: the default task's verdict plus each scored extra task's."""
    per_task = {}
    for name, m in tasks.items():
        if precision in m:
            drop = (m["fp32"]["top1"] - m[precision]["top1"]) * 100.0
            per_task[name] = {"drop_pts": drop, "passed": drop <= target.accuracy_tolerance_pts}
    failed = [name for name, g in per_task.items() if not g["passed"]]
    return {**default_gate, "tasks": per_task, "failed_tasks": failed, "passed": default_gate["passed"] and not failed}


def _gate_message(manifest: Manifest, out: Path, target: Target) -> str:
    m, g, precision = manifest.metrics, manifest.metrics["gate"], manifest.precision
    failed = [t for t, tg in g.get("tasks", {}).items() if not tg["passed"]]
    if failed and g["drop_pts"] <= g["tolerance_pts"]:  # the default task passed; another did not
        t = m["tasks"][failed[0]]
        return (f"task '{failed[0]}': {precision.upper()} top1 {t[precision]['top1']:.2%} is "
                f"{g['tasks'][failed[0]]['drop_pts']:.2f} points below FP32 {t['fp32']['top1']:.2%} on "
                f"{t['fp32']['n']} validation images, above target '{target.name}' tolerance of "
                f"{target.accuracy_tolerance_pts:g} points ({target.path}: accuracy_tolerance_pts)"
                + (f"; tasks {', '.join(failed[1:])} fail too" if len(failed) > 1 else "")
                + f"; the bundle and its metrics are in '{out}'")
    return (f"{precision.upper()} top1 {m[precision]['top1']:.2%} is {g['drop_pts']:.2f} points below FP32 "
            f"{m['fp32']['top1']:.2%} on {m['val']['n']} validation images, above target '{target.name}' "
            f"tolerance of {target.accuracy_tolerance_pts:g} points ({target.path}: accuracy_tolerance_pts); "
            f"the bundle and its metrics are in '{out}'")


# -- the pipeline ----------------------------------------------------------------------------
def export_run(run_dir: str | Path, target: str, out: str | Path, cfg: ExportConfig = ExportConfig()) -> ExportResult:
    """Export `run_dir` for `target` into the bundle folder `out` (see the module docstring)."""
    started = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise EdgetlError(f"out '{out}' is the run folder or inside it; pass a folder outside '{run_dir}'")
    check_destination(out)  # refuse a folder of user files before seconds of loading, not after
    p = plan(run_dir, target, cfg)
    run, fmt = p.run, p.fmt
    preprocess = run.preprocess.with_layout(p.target.layout)
    labels = tuple(run.labels)
    head = Head(run.model.head.weight.detach().cpu().numpy().astype(np.float32),
                run.model.head.bias.detach().cpu().numpy().astype(np.float32), labels)

    with BundleWriter(out) as w:
        np.savez(w.path("head.npz"), weight=head.weight, bias=head.bias)
        w.add_file("head.npz", w.path("head.npz"))
        task_heads = _task_heads(run)
        for name, task_head in task_heads.items():
            np.savez(w.path(f"head.{name}.npz"), weight=task_head.weight, bias=task_head.bias)
            w.add_file(f"head.{name}.npz", w.path(f"head.{name}.npz"))
        w.add_bytes("labels.txt", ("\n".join(labels) + "\n").encode("utf-8"))  # a convenience; the manifest rules
        art = convert_and_quantize(p, w, cfg, preprocess)
        exported, facts = art["exported"], art["facts"]
        manifest = Manifest(
            target=p.target.to_dict(), precision=p.precision, backend=fmt.backend, format=fmt.name,
            model={"file": art["backbone_file"], **exported.io, "embedding_dim": int(head.weight.shape[1])},
            preprocess=preprocess.to_dict(), labels=labels, metrics={}, versions=_versions(fmt),
            backbone={"name": run.spec.name, "weights": run.weights_origin, "strategy": run.strategy},
            export={k: v for k, v in exported.info.items() if k != "calibration"} | {"validation": facts},
            metrics_backend=fmt.host_backend)

        host_backend = fmt.host_backend or fmt.backend
        metrics: dict = {"val": p.val_info}
        metrics["fp32"], embeddings = score(p, w.stage, manifest, head, art["fp32"].path.name, art["fp32"].io,
                                            "evaluating FP32", host_backend)
        fp32_embeddings = embeddings
        if p.precision != "fp32":
            metrics[p.precision], embeddings = score(p, w.stage, manifest, head, art["backbone_file"], exported.io,
                                                     f"evaluating {p.precision.upper()}", host_backend)
            metrics["gate"] = gate(metrics, p.precision, p.target)
            if not metrics["gate"]["passed"] and cfg.recover == "auto":
                recovery = _recover(p, w, cfg, preprocess, manifest, head, art, metrics, embeddings, host_backend)
                if recovery.won:  # the winner's backbone and (re-fitted, factory) head become the bundle's
                    head, exported, facts, embeddings = recovery.head, recovery.exported, recovery.facts, \
                        recovery.embeddings
                    p.recipe = recovery.recipe
                    metrics[p.precision] = recovery.metrics
                    metrics["gate"] = gate(metrics, p.precision, p.target)
                    np.savez(w.path("head.npz"), weight=head.weight, bias=head.bias)
                    manifest = manifest.replace(
                        model={**manifest.model, **exported.io},
                        export={k: v for k, v in exported.info.items() if k != "calibration"} | {"validation": facts})
                manifest = manifest.replace(extra={**manifest.extra, "recovery": recovery.record})
        task_truth = {}  # task -> class index per validation image, for the tasks that could be scored
        if task_heads:
            metrics["tasks"], task_truth = _score_tasks(p, task_heads, fp32_embeddings, embeddings)
            if "gate" in metrics:
                default_gate = metrics["gate"]
                metrics["gate"] = _gate_tasks(default_gate, metrics["tasks"], p.precision, p.target)
                if metrics["gate"]["failed_tasks"] and cfg.recover == "auto":
                    _refit_tasks(p, w, manifest, exported, task_heads, metrics, task_truth, embeddings, host_backend)
                    metrics["gate"] = _gate_tasks(default_gate, metrics["tasks"], p.precision, p.target)
        metrics["size_bytes"] = {"fp32": art["fp32_size"], p.precision: facts["size_bytes"]}
        run_metrics = run_dir / "metrics.json"
        if cfg.val is None:
            torch_m = json.loads(run_metrics.read_text(encoding="utf-8"))
            metrics["torch"] = {k: torch_m.get(k) for k in ("top1", "balanced_accuracy", "n")}

        ref_idx = select_stratified(list(range(len(p.val_y))), p.val_y, REFERENCE_MAX, seed=0)
        # Each scored extra task's labels of the same images (`labels.<task>`), so a device
        # guardrail checks a task's new head against that task's truth, never the default's.
        task_refs = {f"labels.{name}": np.asarray(y, np.int64)[ref_idx] for name, y in task_truth.items()}
        np.savez(w.path("reference.npz"), embeddings=embeddings[ref_idx].astype(np.float32),
                 labels=np.asarray(p.val_y, np.int64)[ref_idx], **task_refs)
        w.add_file("reference.npz", w.path("reference.npz"))
        w.add_file(art["backbone_file"], exported.path)
        for name, path in exported.extra_files.items():
            w.add_file(name, path)
        extra: dict = {"reference": {"file": "reference.npz", "n": len(ref_idx), "source": "validation images",
                                     "precision": p.precision}}
        if "calibration" in exported.info:
            extra["calibration"] = {**exported.info["calibration"], **p.calib_info}
        if cfg.fused:
            extra["fused"] = _fused(p, w, art["request"], run, preprocess, host_backend, head)
        export_info = {**manifest.export, "seconds": round(time.perf_counter() - started, 1)}
        if task_heads:
            extra["tasks"] = {name: {"head": f"head.{name}.npz", "labels": list(h.labels)}
                              for name, h in task_heads.items()}
        manifest = w.commit(manifest.replace(metrics=metrics, export=export_info, **extra))

    passed = bool(metrics.get("gate", {}).get("passed", True))
    return ExportResult(out, manifest, passed, "" if passed else _gate_message(manifest, out, p.target))


def _recover(p: _Plan, w: BundleWriter, cfg: ExportConfig, preprocess, manifest: Manifest, head: Head, art: dict,
             metrics: dict, embeddings: np.ndarray, host_backend: str):
    """The recovery ladder (edgetl/recovery.py) on this export's staged artifacts."""
    from edgetl.recovery import LadderInput, recover

    def open_predictor(path: Path, io: dict, with_head: Head) -> Predictor:
        rel = Path(path).relative_to(w.stage).as_posix()
        return staged_predictor(p, w.stage, manifest, with_head, rel, io, host_backend)

    calib = Path(cfg.calib) if cfg.calib else None
    return recover(LadderInput(p, w.stage, head, art["fp32"], art["exported"], metrics, embeddings, open_predictor,
                               lambda recipe: _calibration(p, calib, preprocess, recipe), art["request"]))


def _fused(p: _Plan, w: BundleWriter, request, run, preprocess, host_backend: str, head: Head | None = None) -> dict:
    fused_file = f"model{p.fmt.suffix}"
    log.info("exporting the fused single-file model (%s)", p.precision.upper())
    model = run.model
    if head is not None and not np.array_equal(head.weight, run.model.head.weight.detach().cpu().numpy()):
        import copy

        import torch

        model = copy.deepcopy(run.model)  # the recovery ladder re-fitted the head: fuse that one
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(head.weight))
            model.head.bias.copy_(torch.from_numpy(head.bias))
    fused = p.fmt.export(request(model.eval(), p.precision), w.path(fused_file))
    p.fmt.validate(fused.path, p.precision)
    backend = open_backend(host_backend, fused.path, fused.io, min(p.target.threads, os.cpu_count() or 1))
    logits = np.concatenate([backend.run(preprocess.batch(p.val_paths[i:i + 16]))
                             for i in range(0, len(p.val_paths), 16)])
    w.add_file(fused_file, fused.path)
    return {"file": fused_file, **fused.io, "num_classes": len(run.labels),
            "top1": float((logits.argmax(1) == np.asarray(p.val_y)).mean())}
