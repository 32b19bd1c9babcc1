"""`edgetl export`: run -> per-target bundle, evaluated with the device runtime, gated.

Steps: pick the format for the target's runtime (FORMATS), export the backbone in FP32
and (when asked) the quantized precision, validate each artifact, score both with the
device runtime's Predictor on the run's validation split, apply the target's accuracy
tolerance, and write the bundle atomically with both metrics side by side.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

import edgetl
from edgetl.bundle import write_bundle
from edgetl.errors import EdgetlError
from edgetl.export.formats import ExportRequest, Format, format_for
from edgetl.quantize.recipes import CalibrationRecipe, load_recipe, select_calibration_images, select_stratified
from edgetl.runtime.backends import open_backend
from edgetl.runtime.evaluate import embed_paths, labelled_images, metrics_from_embeddings
from edgetl.runtime.images import scan_images
from edgetl.runtime.predictor import Predictor
from edgetl.targets import Target, load_target

log = logging.getLogger("edgetl")

REFERENCE_MAX = 400  # reference embeddings kept for the on-device guardrail


class AccuracyGateError(EdgetlError):
    pass


@dataclass(frozen=True)
class ExportOptions:
    target: str
    out: Path
    precision: str | None = None
    calib: Path | None = None
    calib_recipe: str | None = None
    fused: bool = False
    allow_accuracy_drop: bool = False
    val: Path | None = None


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


def _validation_data(run_dir: Path, labels: list[str], val: Path | None):
    """(val paths, val labels, train paths, train labels, description) for this run."""
    if val is not None:
        paths, y, _ = labelled_images(val, labels)
        return paths, y, [], [], {"source": str(val)}
    record = {}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        record = json.loads(metrics_path.read_text(encoding="utf-8")).get("data") or {}
    if not record.get("val_files"):
        raise EdgetlError(f"'{metrics_path}' records no validation split; pass --val DATA (class folders) "
                          "to evaluate the exported model")
    from edgetl.data import split_from_record

    split = split_from_record(record)
    if list(split.labels) != list(labels):
        raise EdgetlError(f"'{metrics_path}' lists labels {split.labels} but the run has {labels}; re-run finetune")
    val_paths, val_y = zip(*split.val)
    train = list(zip(*split.train)) if split.train else [(), ()]
    return (list(val_paths), list(val_y), list(train[0]), list(train[1]),
            {"source": "run validation split", "root": record["root"], "seed": record.get("seed"),
             "val_split": record.get("val_split")})


def _calibration_pool(calib: Path | None, train_paths: list, train_y: list) -> tuple[list, list, str]:
    if calib is not None:
        paths, _ = scan_images(calib)
        if not paths:
            raise EdgetlError(f"--calib '{calib}' holds no readable images")
        # Stratify by the first folder under DATA when there are class folders.
        groups = [p.relative_to(calib).parts[0] if len(p.relative_to(calib).parts) > 1 else "" for p in paths]
        return paths, groups, str(calib)
    if not train_paths:
        raise EdgetlError("INT8 needs calibration images: the run records no training files; pass --calib DATA")
    return train_paths, train_y, "run training split"


def _check_precision(target: Target, fmt: Format, precision: str) -> None:
    from edgetl.export.tensorrt import precision_refusal

    why = precision_refusal(target, precision)
    if why:
        raise EdgetlError(f"{why} ({target.path})")
    if precision not in target.precisions:
        raise EdgetlError(f"target '{target.name}' ({target.path}) allows precisions {list(target.precisions)}, "
                          f"not '{precision}'; pick one of those with --precision")
    if precision not in fmt.precisions:
        raise EdgetlError(f"format '{fmt.name}' cannot produce '{precision}' (it offers {list(fmt.precisions)})")


def _evaluate(stage: Path, manifest: dict, model_file: str, io: dict, threads: int, paths: list, y: list,
              description: str, backend: str) -> tuple[dict, np.ndarray]:
    model = {**manifest["model"], "file": model_file, **io}
    predictor = Predictor(stage, {**manifest, "model": model},
                          open_backend(backend, stage / model_file, model, threads))
    embeddings, seconds = embed_paths(predictor, paths, description=description)
    return metrics_from_embeddings(predictor, embeddings, y, seconds), embeddings


def _gate(metrics: dict, precision: str, target: Target) -> dict:
    fp32, quant = metrics["fp32"]["top1"], metrics[precision]["top1"]
    drop = (fp32 - quant) * 100.0
    return {"quantized": precision, "drop_pts": drop, "tolerance_pts": target.accuracy_tolerance_pts,
            "passed": drop <= target.accuracy_tolerance_pts}


def export_run(run_dir: str | Path, options: ExportOptions) -> dict:
    """Export `run_dir` for `options.target`; returns the manifest written to `options.out`.

    Raises AccuracyGateError (after writing the bundle) when the quantized model loses more
    top-1 than the target tolerates, unless `allow_accuracy_drop`.
    """
    from edgetl.model import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    target = load_target(options.target)
    fmt = format_for(target.runtime)
    precision = options.precision or target.default_precision
    _check_precision(target, fmt, precision)
    recipe: CalibrationRecipe = load_recipe(options.calib_recipe or target.calibration)
    preprocess = run.preprocess.with_layout(target.layout)
    labels = list(run.labels)
    val_paths, val_y, train_paths, train_y, val_info = _validation_data(run_dir, labels, options.val)

    calib_info: dict = {}

    def calibration() -> list[np.ndarray]:
        pool, groups, source = _calibration_pool(options.calib, train_paths, train_y)
        chosen = select_calibration_images(pool, groups, recipe)
        calib_info.update({"source": source, "pool": len(pool)})
        log.info("calibrating on %d images from %s (recipe '%s', method %s)", len(chosen), source, recipe.name,
                 recipe.method)
        return [preprocess.batch([p]) for p in chosen]

    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        t0 = time.perf_counter()
        weight = run.model.head.weight.detach().cpu().numpy().astype(np.float32)
        bias = run.model.head.bias.detach().cpu().numpy().astype(np.float32)
        np.savez(stage / "head.npz", weight=weight, bias=bias)
        (stage / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")

        def request(module, prec: str, base: Path | None = None) -> ExportRequest:
            return ExportRequest(module=module, size=preprocess.size, layout=target.layout, precision=prec,
                                 recipe=recipe, calibration=calibration, threads=min(target.threads, 2), base=base,
                                 target=target)

        backbone_file = f"backbone{fmt.suffix}"
        log.info("exporting %s FP32 (%s) for target '%s'", run.spec.name, fmt.name, target.name)
        fp32_file = backbone_file if precision == "fp32" else f"backbone.fp32{fmt.suffix}"
        fp32 = fmt.export(request(run.backbone, "fp32"), stage / fp32_file)
        exported, facts = fp32, fmt.validate(fp32.path, "fp32")
        fp32_size = facts["size_bytes"]
        if precision != "fp32":
            log.info("quantizing to %s", precision.upper())
            exported = fmt.export(request(run.backbone, precision, base=fp32.path), stage / backbone_file)
            facts = fmt.validate(exported.path, precision)

        manifest = {
            "target": target.to_dict(),
            "precision": precision,
            "backend": fmt.backend,
            "format": fmt.name,
            "model": {"file": backbone_file, **exported.io, "embedding_dim": int(weight.shape[1])},
            "head": "head.npz",
            "preprocess": preprocess.to_dict(),
            "labels": labels,
            "backbone": {"name": run.spec.name, "weights": run.weights_origin, "strategy": run.strategy},
            "export": {k: v for k, v in exported.info.items() if k != "calibration"} | {"validation": facts},
        }
        threads = min(target.threads, os.cpu_count() or 1)
        host_backend = fmt.host_backend or fmt.backend
        if fmt.host_backend:
            manifest["metrics_backend"] = fmt.host_backend
        metrics: dict = {"val": {**val_info, "n": len(val_paths)}}
        metrics["fp32"], embeddings = _evaluate(stage, manifest, fp32.path.name, fp32.io, threads, val_paths, val_y,
                                                "evaluating FP32", host_backend)
        if precision != "fp32":
            metrics[precision], embeddings = _evaluate(stage, manifest, backbone_file, exported.io, threads,
                                                       val_paths, val_y, f"evaluating {precision.upper()}",
                                                       host_backend)
            metrics["gate"] = _gate(metrics, precision, target)
        metrics["size_bytes"] = {"fp32": fp32_size, precision: facts["size_bytes"]}
        run_metrics = run_dir / "metrics.json"
        if run_metrics.is_file() and options.val is None:
            torch_m = json.loads(run_metrics.read_text(encoding="utf-8"))
            metrics["torch"] = {k: torch_m.get(k) for k in ("top1", "balanced_accuracy", "n")}
        manifest["metrics"] = metrics
        if "calibration" in exported.info:
            manifest["calibration"] = {**exported.info["calibration"], **calib_info}

        ref_idx = select_stratified(list(range(len(val_y))), val_y, REFERENCE_MAX, seed=0)
        np.savez(stage / "reference.npz", embeddings=embeddings[ref_idx].astype(np.float32),
                 labels=np.asarray(val_y, np.int64)[ref_idx])
        manifest["reference"] = {"file": "reference.npz", "n": len(ref_idx), "source": "validation images",
                                 "precision": precision}

        files = {backbone_file: stage / backbone_file, "head.npz": stage / "head.npz",
                 "labels.txt": stage / "labels.txt", "reference.npz": stage / "reference.npz"}
        files.update(exported.extra_files)
        if options.fused:
            fused_file = f"model{fmt.suffix}"
            log.info("exporting the fused single-file model (%s)", precision.upper())
            fused = fmt.export(request(run.model.eval(), precision), stage / fused_file)
            fmt.validate(fused.path, precision)
            backend = open_backend(host_backend, fused.path, fused.io, threads)
            logits = np.concatenate([backend.run(preprocess.batch(val_paths[i:i + 16]))
                                     for i in range(0, len(val_paths), 16)])
            fused_top1 = float((logits.argmax(1) == np.asarray(val_y)).mean())
            manifest["fused"] = {"file": fused_file, **fused.io, "num_classes": len(labels), "top1": fused_top1}
            files[fused_file] = fused.path
        manifest["versions"] = _versions(fmt)
        manifest["export"]["seconds"] = round(time.perf_counter() - t0, 1)
        write_bundle(out, manifest, files)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    gate = manifest["metrics"].get("gate")
    if gate and not gate["passed"]:
        m = manifest["metrics"]
        message = (f"{precision.upper()} top1 {m[precision]['top1']:.2%} is {gate['drop_pts']:.2f} points below FP32 "
                   f"{m['fp32']['top1']:.2%} on {len(val_paths)} validation images, above target '{target.name}' "
                   f"tolerance of {target.accuracy_tolerance_pts:g} points ({target.path}: accuracy_tolerance_pts); "
                   f"the bundle and its metrics are in '{out}'")
        if not options.allow_accuracy_drop:
            raise AccuracyGateError(message + "; try another --calib-recipe, or pass --allow-accuracy-drop to accept it")
        log.warning("%s; accepted (--allow-accuracy-drop)", message)
    return manifest
