"""Latency of a bundle's model, measured like LiteRT's `benchmark_model` (torch-free).

Warm-up runs first (the first runs of LiteRT/XNNPACK and onnxruntime pack weights and
allocate arenas), then N timed single-image runs of the backend on an already preprocessed
input: the figure a camera loop pays per frame for inference. Decoding and preprocessing
are timed apart (`preprocess_ms`), on a 640x480 image, because they depend on the camera,
not on the model.

The same function serves `edgetl build` (host latency, labelled "host") and
`edgetl-device benchmark` on the board (labelled "device" when build reads it back), so
the two figures are measured the same way.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from edgetl.backends import Backbone, check_threads, open_backend
from edgetl.bundle import Bundle
from edgetl.core.progress import track
from edgetl.errors import EdgetlError

log = logging.getLogger("edgetl")

# Which package provides each backend on this machine (recorded with the figures).
BACKEND_PACKAGES = {"tflite": ("ai-edge-litert", "tflite-runtime"), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                    "tensorrt": ("tensorrt",)}
CAMERA_FRAME = (480, 640)  # height, width of the synthetic frame preprocessing is timed on
PREPROCESS_RUNS = 10


@dataclass(frozen=True)
class BenchmarkConfig:
    """How to measure: runs, warm-up runs, threads (None: the target's, capped at the CPUs)
    and backend (None: the bundle's; e.g. onnxruntime to time a Jetson bundle's ONNX on a host)."""

    runs: int = 50
    warmup: int = 10
    threads: int | None = None
    backend: str | None = None


def percentiles(times_ms: list[float]) -> dict:
    """median, p90 (linear interpolation), mean, min, max and std of run times in ms."""
    t = np.asarray(times_ms, dtype=np.float64)
    return {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)), "mean": float(t.mean()),
            "min": float(t.min()), "max": float(t.max()), "std": float(t.std())}


def time_runs(fn: Callable[[], object], runs: int, warmup: int, description: str = "benchmark") -> list[float]:
    """Call `fn` `warmup` times untimed, then `runs` times timed; the run times in ms."""
    if runs < 1 or warmup < 0:
        raise EdgetlError(f"runs must be at least 1 and warmup 0 or more, got runs={runs}, warmup={warmup}")
    times = []
    with track(description, warmup + runs) as task:
        for _ in range(warmup):
            fn()
            task.advance()
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            task.advance()
    return times


def synthetic_frame(seed: int = 0) -> np.ndarray:
    """A deterministic 640x480 RGB frame (uint8 noise). CPU inference time of these networks
    does not depend on pixel values; a fixed frame keeps host and device runs identical."""
    return np.random.default_rng(seed).integers(0, 256, (*CAMERA_FRAME, 3), dtype=np.uint8)


def machine() -> dict:
    """What the figures were measured on (no host name, no user)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"system": platform.system(), "arch": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version()}


def backend_version(backend: str) -> str | None:
    for package in BACKEND_PACKAGES.get(backend, ()):
        try:
            return f"{package} {metadata.version(package)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def open_for_benchmark(bundle: Bundle, threads: int | None, backend: str | None) -> Backbone:
    """The bundle's backbone on `backend` (default the bundle's) with `threads` (default the
    target's), never more threads than CPUs."""
    m = bundle.manifest
    cpus = os.cpu_count() or 1
    asked = check_threads(threads)
    threads = asked or m.threads or cpus
    if threads > cpus:
        # More threads than cores only slows LiteRT and onnxruntime down (edgetl/backends Backbone.open).
        whose = "asked for" if asked else f"asked for (target '{m.target_name}')"
        log.warning("%d threads %s, this machine has %d CPUs; using %d", threads, whose, cpus, cpus)
        threads = cpus
    name = backend or m.backend
    return Backbone(bundle.preprocess, open_backend(name, bundle.model_path, m.model, threads), m.embedding_dim,
                    m.model["input"]["shape"])


def benchmark_backbone(backbone: Backbone, runs: int = 50, warmup: int = 10) -> dict:
    """Time `backbone`'s backend on one preprocessed frame (see the module docstring).

    Args:
        backbone: a bundle's backbone on its backend.
        runs: timed runs.
        warmup: untimed runs first.

    Returns:
        {"median", "p90", "mean", "min", "max", "std"} in ms, "runs", "warmup", "threads",
        "backend", "preprocess_ms" (median, one 640x480 frame).

    Raises:
        EdgetlError: runs < 1 or warmup < 0.
    """
    frame = synthetic_frame()
    batch = backbone.prepare([frame])
    times = time_runs(lambda: backbone.backend.run(batch), runs, warmup,
                      description=f"benchmarking {backbone.backend.path.name}")
    pre = []
    for _ in range(PREPROCESS_RUNS):
        t0 = time.perf_counter()
        backbone.prepare([frame])
        pre.append((time.perf_counter() - t0) * 1e3)
    return {**percentiles(times), "runs": runs, "warmup": warmup, "threads": backbone.backend.threads,
            "backend": backbone.backend.name, "preprocess_ms": float(np.median(pre))}


def benchmark_bundle(path: str | Path, config: BenchmarkConfig = BenchmarkConfig()) -> dict:
    """Measure a bundle's inference latency on this machine.

    Args:
        path: the bundle folder (verified first).
        config: runs, warm-up, threads, backend.

    Returns:
        The benchmark JSON `edgetl-device benchmark --json` prints and `edgetl build
        --device-results` reads: target, bundle_sha256, precision, backend, threads, runs,
        warmup, latency_ms {median, p90, mean, min, max, std}, preprocess_ms, machine, versions.

    Raises:
        BundleError: the bundle is missing, edited or tampered.
        EdgetlError: the backend is not installed, bad runs/warmup/threads.
    """
    import edgetl

    bundle = Bundle.open(path)
    backbone = open_for_benchmark(bundle, config.threads, config.backend)
    result = benchmark_backbone(backbone, config.runs, config.warmup)
    m = bundle.manifest
    latency = {k: result[k] for k in ("median", "p90", "mean", "min", "max", "std")}
    return {
        "kind": "edgetl-benchmark",
        "bundle": str(path),
        "target": m.target_name,
        "bundle_sha256": bundle.digest,
        "precision": m.precision,
        "format": m.format,
        "bundle_backend": m.backend,
        "backend": result["backend"],
        "threads": result["threads"],
        "runs": result["runs"],
        "warmup": result["warmup"],
        "input_shape": list(m.model["input"]["shape"]),
        "latency_ms": latency,
        "preprocess_ms": result["preprocess_ms"],
        "machine": machine(),
        "versions": {"edgetl": edgetl.__version__, "backend": backend_version(result["backend"]),
                     "numpy": np.__version__},
    }
