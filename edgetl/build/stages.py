"""The cached stages of `edgetl build`, each a function of its inputs' content hash:

    rank       LogME + k-NN of each candidate's frozen embeddings, when `keep_top` asks to
               fine-tune only the best-ranked ones (edgetl.rank)
    finetune   one run per candidate                   (edgetl.finetune)
    export     one bundle per candidate x target       (edgetl.export; in worker processes with --jobs)
    verify     the written bundle, opened and scored with the device runtime on the run's
               validation split (must reproduce the manifest's top-1) and its selection split
    benchmark  host latency with the target's backend and threads (edgetl.runtime.benchmark)

Each returns a `StageResult`; `reused` says the cache answered. Keys hash everything the
output depends on (see `*_key`); a changed input gives a new key, so nothing is invalidated
by hand.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import edgetl
from edgetl.build.cache import StageCache, folder_digest, key_of
from edgetl.build.config import Candidate, TargetSpec, stage_options
from edgetl.core.fsutil import atomic_write_bytes, sha256_file
from edgetl.errors import EdgetlError
from edgetl.yamlcfg import ConfigError

log = logging.getLogger("edgetl")

# Packages whose version changes what a stage produces.
TRAIN_PACKAGES = ("torch", "torchvision", "timm", "numpy", "Pillow")
EXPORT_PACKAGES = ("torch", "timm", "numpy", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "onnx",
                   "onnxruntime", "onnxscript")
RUNTIME_PACKAGES = ("numpy", "Pillow", "ai-edge-litert", "onnxruntime")


def package_versions(names) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class StageResult:
    stage: str
    key: str
    label: str  # what it was done for: "tf_efficientnet_lite0", "tf_efficientnet_lite0 -> rpi5"
    reused: bool
    seconds: float  # of this build (reading the cache when reused)
    record: dict = field(default_factory=dict)  # the stage.json
    path: Path | None = None  # the cache entry
    error: str | None = None  # an export that failed; the build goes on without it

    def to_summary(self) -> dict:
        out = {"stage": self.stage, "key": self.key, "label": self.label, "reused": self.reused,
               "seconds": round(self.seconds, 3)}
        if self.reused and "seconds" in self.record:
            out["built_seconds"] = self.record["seconds"]  # what the stage cost when it ran
        if self.error:
            out["error"] = self.error
        return out


def _log_done(r: StageResult, what: str) -> None:
    if r.reused:
        log.info("%s %s: reused (key %s)", r.stage, r.label, r.key[:12])
    elif r.error:
        log.error("%s %s: failed after %.1f s: %s", r.stage, r.label, r.seconds, r.error)
    else:
        log.info("%s %s: %s in %.1f s (key %s)", r.stage, r.label, what, r.seconds, r.key[:12])


def _cached_stage(cache: StageCache, stage: str, key: str, label: str, t0: float,
                  compute: Callable[[Path], dict], done: Callable[[dict], str]) -> StageResult:
    """The cache's answer for (`stage`, `key`), or `compute(staged_folder) -> record` run once
    and committed; `done(record)` is the log line's figure. A failure leaves no entry."""
    record = cache.load(stage, key)
    if record is not None:
        r = StageResult(stage, key, label, True, time.perf_counter() - t0, record, cache.entry(stage, key))
        _log_done(r, "")
        return r
    staged = cache.stage_dir(stage, key)
    try:
        record = compute(staged)
        path = cache.commit(stage, key, staged, record)
    except BaseException:
        cache.discard(staged)
        raise
    r = StageResult(stage, key, label, False, time.perf_counter() - t0, record, path)
    _log_done(r, done(record))
    return r


# -- rank -------------------------------------------------------------------------------------
def rank_stage(cache: StageCache, data: Path, data_digest: str, cand: Candidate) -> StageResult:
    """Score `cand`'s frozen embeddings of its training split (edgetl.rank.rank), the split and
    weights it would be fine-tuned with; the score is cached like a fine-tune."""
    from edgetl.rank import make_candidate, rank
    from edgetl.transfer.config import FinetuneConfig

    t0 = time.perf_counter()
    cfg = FinetuneConfig(**cand.finetune)
    options = stage_options(cand.finetune)
    key = key_of({"stage": "rank", "edgetl": edgetl.__version__, "versions": package_versions(TRAIN_PACKAGES),
                  "data": {"root": str(data.resolve()), "digest": data_digest},
                  "options": {k: options.get(k) for k in ("backbone", "input_size", "val_split", "seed")},
                  "weights": weights_identity(options)})

    def compute(staged: Path) -> dict:
        ranking = rank(data, [make_candidate(cand.backbone, cand.input_size, f"candidate '{cand.name}'")],
                       val_split=cfg.val_split, seed=cfg.seed, cache_dir=cfg.cache_dir, weights=cfg.weights)
        score = ranking.scores[0]
        return {"candidate": cand.name, "logme": score.logme, "knn_top1": score.knn_top1, "n": score.n,
                "k": ranking.k, "seconds": round(time.perf_counter() - t0, 2)}

    return _cached_stage(cache, "rank", key, cand.name, t0, compute,
                         lambda rec: f"LogME {rec['logme']:.4f}, {rec['k']}-NN {rec['knn_top1']:.4f}")


# -- finetune ---------------------------------------------------------------------------------
_weights_digests: dict[str, str] = {}


def weights_identity(options: dict) -> str:
    """sha256 of the weight file a candidate starts from, or its origin when it has no file."""
    from edgetl.backbones import get_spec, locate_weights

    path, origin = locate_weights(get_spec(options["backbone"]), options.get("weights", "default"))
    if path is None:
        return origin
    key = str(path.resolve())
    if key not in _weights_digests:
        _weights_digests[key] = sha256_file(path)
    return _weights_digests[key]


@dataclass(frozen=True)
class Adaptation:
    """The project's `adapt:` as the finetune stage needs it: the folder, its content digest, the method."""

    target_images: Path
    digest: str
    method: str


def _labels_digest(path: Path) -> str:
    return folder_digest(path) if path.is_dir() else sha256_file(path)


def finetune_key(data: Path, data_digest: str, cand: Candidate, adapt: Adaptation | None = None,
                 tasks: tuple = ()) -> str:
    options = stage_options(cand.finetune)
    weights = weights_identity(options)
    if options.get("weights") not in ("default", "timm", "none"):
        options.pop("weights")  # a weights file by its content (`weights`), not by where it is
    inputs = {"stage": "finetune", "edgetl": edgetl.__version__, "versions": package_versions(TRAIN_PACKAGES),
              "data": {"root": str(data.resolve()), "digest": data_digest}, "options": options, "weights": weights}
    if adapt is not None:  # absent otherwise: runs cached before `adapt:` existed keep their keys
        inputs["adapt"] = {"method": adapt.method, "target_images": adapt.digest}
    if tasks:  # by the labels' content, not where they are
        inputs["tasks"] = [{"name": t.name, "weight": t.weight, "labels": t.labels and _labels_digest(t.labels)}
                           for t in tasks]
    return key_of(inputs)


def finetune_stage(cache: StageCache, data: Path, data_digest: str, cand: Candidate,
                   adapt: Adaptation | None = None, tasks: tuple = ()) -> StageResult:
    """Fine-tune `cand` on `data` once (then adapt it to the field images when the project
    says so); later builds reuse the run while its inputs hold."""
    t0 = time.perf_counter()
    key = finetune_key(data, data_digest, cand, adapt, tasks)

    def compute(staged: Path) -> dict:
        log.info("finetune %s: training (%s)", cand.name, ", ".join(f"{k}={v}" for k, v in cand.finetune.items()))
        extra = {} if adapt is None else {"target_images": adapt.target_images, "adapt": adapt.method}
        if tasks:
            extra.update(tasks={t.name: t.labels for t in tasks if t.labels},
                         task_weights={t.name: t.weight for t in tasks})
        run = edgetl.finetune(data, staged / "run", **extra, **cand.finetune)
        sel = run.metrics.get("selection") if isinstance(run.metrics.get("selection"), dict) else {}
        return {"candidate": cand.name, "options": stage_options(cand.finetune),
                "seconds": round(time.perf_counter() - t0, 2),
                "top1": run.metrics["top1"], "balanced_accuracy": run.metrics["balanced_accuracy"],
                "n": run.metrics["n"], "strategy": run.metrics.get("strategy"),
                "selection": {k: sel.get(k) for k in ("split", "n", "top1", "balanced_accuracy")} if sel else None,
                "model_sha256": sha256_file(staged / "run" / "model.pt"),
                **({} if adapt is None else {"adaptation": _adaptation_record(run.metrics)}),
                **({"tasks": {n: {"top1": t["top1"], "balanced_accuracy": t["balanced_accuracy"]}
                              for n, t in run.metrics["tasks"].items()}} if tasks else {})}

    return _cached_stage(cache, "finetune", key, cand.name, t0, compute, lambda rec: f"top1 {rec['top1']:.4f}")


def _adaptation_record(metrics: dict) -> dict:
    """What the build reports of an adapted candidate: the method kept, its source check, and
    the fine-tuned model's clean validation top-1 before adaptation."""
    a = metrics.get("adaptation") or {}
    check = a.get("source_check") or {}
    return {"method": a.get("method"), "requested": a.get("requested"), "n_target": a.get("n_target"),
            "source_check": {k: check.get(k) for k in ("split", "drop_points", "passed")},
            "unadapted_top1": (metrics.get("unadapted") or {}).get("top1")}


# -- export -----------------------------------------------------------------------------------
def _recipe_text(spec: TargetSpec) -> str:
    from edgetl.quantize.recipes import load_recipe
    from edgetl.targets import load_target

    name = spec.export.get("calib_recipe") or load_target(spec.yaml_path).calibration
    recipe = load_recipe(name)
    return Path(recipe.path).read_text(encoding="utf-8")


def export_target(cache: StageCache, spec: TargetSpec) -> Path:
    """The target YAML to export with: the target's own, or a copy whose accuracy_tolerance_pts
    is the build's max_drop_pts limit when the project sets another. Export's accuracy gate
    and its recovery ladder (edgetl/recovery.py) aim at that tolerance; with the YAML's 1 point
    under a 4-point build limit, the demo's Jetson export discarded a recalibration that
    lost 2 points and shipped the one that lost 6. Negative limits go in as 0 (a target YAML
    takes 0-100); the build gate still applies the negative one.

    The latency budget is not copied: export's ladder reads it only to skip its int16 step
    (TFLite), and a budget change then re-judges the bundles without exporting again.
    """
    import yaml

    from edgetl.targets import load_target
    from edgetl.yamlcfg import read_mapping

    target = load_target(spec.yaml_path)
    tolerance = max(0.0, float(spec.max_drop_pts.value))
    if tolerance == target.accuracy_tolerance_pts:
        return spec.yaml_path
    body = read_mapping(spec.yaml_path)
    body["accuracy_tolerance_pts"] = tolerance
    text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    path = cache.root / "targets" / key_of(text)[:16] / f"{target.name}.yaml"  # a target's name is its file's
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode("utf-8"))
    load_target(path)  # what export will accept
    return path


def export_key(ft: StageResult, spec: TargetSpec, target_yaml: Path) -> str:
    options = dict(spec.export)
    options.pop("calib_recipe", None)  # the recipe by content (below), not by where its file is
    for name in ("calib", "val"):  # folders by content, not by path
        if options.get(name):
            options[name] = folder_digest(Path(options[name]))
    return key_of({"stage": "export", "edgetl": edgetl.__version__, "versions": package_versions(EXPORT_PACKAGES),
                   "finetune": ft.key, "model_sha256": ft.record["model_sha256"],
                   "target": {"name": spec.name, "yaml": target_yaml.read_text(encoding="utf-8")},
                   "recipe": _recipe_text(spec), "options": options})


@dataclass(frozen=True)
class ExportJob:
    """One export, as a worker process receives it (plain, picklable values)."""

    key: str
    label: str
    run_dir: str
    target: str  # the target YAML path
    options: dict
    staged: str  # the cache staging folder; the bundle goes to staged/bundle


def run_export_job(job: ExportJob) -> dict:
    """Run one export (in this process or a worker). Returns {"seconds", "passed", "message"}
    or {"error": message} for a failure the build reports and survives (EdgetlError);
    ConfigError and anything unexpected propagate."""
    t0 = time.perf_counter()
    try:
        result = edgetl.export(job.run_dir, job.target, Path(job.staged) / "bundle", **job.options)
    except ConfigError:
        raise
    except EdgetlError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - t0}
    m = result.manifest
    return {"seconds": round(time.perf_counter() - t0, 2), "passed": result.passed, "message": result.message,
            "precision": m.precision, "format": m.format}


def worker_init(level: int, threads: int) -> None:
    """A spawned export worker: log like the parent, and share the cores with its siblings."""
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", force=True)
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:  # pragma: no cover - the host extra is installed wherever build runs
        pass


# -- verify -----------------------------------------------------------------------------------
def _run_split(run_dir: Path):
    from edgetl.data import split_from_record

    record = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return record, split_from_record(record["data"])


def verify_key(ft: StageResult, bundle_sha256: str, spec: TargetSpec) -> str:
    val = folder_digest(Path(spec.export["val"])) if spec.export.get("val") else None
    return key_of({"stage": "verify", "edgetl": edgetl.__version__, "versions": package_versions(RUNTIME_PACKAGES),
                   "finetune": ft.key, "bundle": bundle_sha256, "val": val, "cpus": os.cpu_count()})


def verify_bundle(bundle_dir: Path, run_dir: Path, spec: TargetSpec) -> dict:
    """Open the written bundle (every sha256 checked) and score it with the device runtime.

    The backend is the one export scored with (`metrics_backend`: onnxruntime for a Jetson
    bundle, whose TensorRT engine is built on the board), with the same threads, so the
    validation top-1 must equal the manifest's. The selection split (training-side images
    fine-tuning held out) is scored too: selection decides on it, never on validation.

    Returns:
        {"val": metrics, "manifest_top1", "reproduced", "selection": metrics or None,
        "selection_split", "fp32_selection_top1", "backend", "threads"}.
    """
    from edgetl.backends import Backbone, open_backend
    from edgetl.bundle import Bundle
    from edgetl.runtime.evaluate import evaluate_items, labelled_images
    from edgetl.runtime.predictor import Predictor

    bundle = Bundle.open(bundle_dir)
    m = bundle.manifest
    backend = m.metrics_backend or m.backend
    threads = min(m.threads or 1, os.cpu_count() or 1)
    backbone = Backbone(bundle.preprocess, open_backend(backend, bundle.model_path, m.model, threads),
                        m.embedding_dim, m.model["input"]["shape"])
    predictor = Predictor(bundle, backbone, head=bundle.factory_head())
    run_record, split = _run_split(run_dir)
    if spec.export.get("val"):
        paths, y, _ = labelled_images(spec.export["val"], list(bundle.labels))
    else:
        paths, y = [p for p, _ in split.val], [c for _, c in split.val]
    keep = ("top1", "balanced_accuracy", "n")
    val = evaluate_items(predictor, paths, y, description=f"verifying {bundle_dir.parent.name[:12]}")
    expected = float(m.metrics[m.precision]["top1"])
    out = {"val": {k: val[k] for k in keep}, "manifest_top1": expected,
           "reproduced": abs(val["top1"] - expected) < 1e-12, "backend": backend, "threads": threads}
    run_sel = run_record.get("selection") if isinstance(run_record.get("selection"), dict) else {}
    if split.selection:
        sel = evaluate_items(predictor, [p for p, _ in split.selection], [c for _, c in split.selection],
                             description="scoring the selection split")
        out["selection"] = {k: sel[k] for k in keep}
        out["selection_split"] = "selection"
        # FP32 on the same images: the bundle itself when it is FP32, else the run's own
        # (torch) score of its kept epoch, recorded by finetune.
        out["fp32_selection_top1"] = sel["top1"] if m.precision == "fp32" else run_sel.get("top1")
        out["fp32_selection_source"] = "bundle" if m.precision == "fp32" else "run (torch)"
    else:
        out["selection"] = None
        out["selection_split"] = "val"
        out["fp32_selection_top1"] = None
    return out


def verify_stage(cache: StageCache, ft: StageResult, ex: StageResult, spec: TargetSpec) -> StageResult:
    from edgetl.bundle import Bundle

    t0 = time.perf_counter()
    bundle_dir = ex.path / "bundle"
    digest = Bundle.open(bundle_dir, verify=False).digest
    key = verify_key(ft, digest, spec)

    def compute(staged: Path) -> dict:
        record = {**verify_bundle(bundle_dir, ft.path / "run", spec), "bundle_sha256": digest}
        return {**record, "seconds": round(time.perf_counter() - t0, 2)}

    return _cached_stage(cache, "verify", key, ex.label, t0, compute, lambda rec: (
        f"val top1 {rec['val']['top1']:.4f} ({'reproduces' if rec['reproduced'] else 'DIFFERS from'} "
        f"the manifest's {rec['manifest_top1']:.4f})"))


# -- benchmark --------------------------------------------------------------------------------
def benchmark_stage(cache: StageCache, ex: StageResult, spec: TargetSpec, runs: int, warmup: int,
                    bundle_sha256: str) -> StageResult:
    """Host latency of one bundle: the target's threads (at most this machine's CPUs) on the
    backend export scored with. Cached per bundle, machine and settings."""
    from edgetl.bundle import Bundle
    from edgetl.runtime.benchmark import backend_version, benchmark_backbone, machine, open_for_benchmark

    t0 = time.perf_counter()
    bundle = Bundle.open(ex.path / "bundle", verify=False)
    m = bundle.manifest
    backend = m.metrics_backend or m.backend
    threads = min(m.threads or 1, os.cpu_count() or 1)
    key = key_of({"stage": "benchmark", "edgetl": edgetl.__version__, "bundle": bundle_sha256, "backend": backend,
                  "backend_version": backend_version(backend), "threads": threads, "runs": runs, "warmup": warmup,
                  "machine": machine()})

    def compute(staged: Path) -> dict:
        result = benchmark_backbone(open_for_benchmark(bundle, threads, backend), runs, warmup)
        return {**result, "machine": machine(), "target_threads": m.threads, "source": "host",
                "seconds": round(time.perf_counter() - t0, 2)}

    return _cached_stage(cache, "benchmark", key, ex.label, t0, compute, lambda rec: (
        f"host median {rec['median']:.2f} ms, p90 {rec['p90']:.2f} ms ({backend}, {threads} threads)"))
