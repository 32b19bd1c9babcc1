"""Deployment targets as data: `targets/<name>.yaml` -> frozen, validated `Target` objects.

A new device is a new YAML file. Every bad key or value is reported with the file and the
key, because the person editing the YAML is usually not the person who wrote this code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgetl.yamlcfg import ConfigError, load_config

TARGETS_DIR = Path(__file__).resolve().parents[1] / "targets"

Precision = Literal["fp32", "fp16", "int8"]
TENSORRT_ONLY = ("jetpack", "tensorrt", "compute_capability", "gpu_arch", "dla_cores", "workspace_mb", "onnx_opset")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: Literal["tflite", "tensorrt"]
    precisions: tuple[Precision, ...]
    default_precision: Precision
    threads: int
    layout: Literal["NHWC", "NCHW"]
    latency_budget_ms: float
    accuracy_tolerance_pts: float  # largest allowed top-1 drop vs FP32, in percentage points
    calibration: str  # default recipe name in calibration/
    cpu: str | None = None
    # TensorRT (Jetson) targets only; the engine is built on the device for exactly this stack.
    jetpack: str | None = None
    tensorrt: str | None = None
    compute_capability: str | None = None
    gpu_arch: str | None = None
    dla_cores: int | None = None
    workspace_mb: int | None = None
    onnx_opset: int | None = None
    path: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        """The target as recorded in a bundle manifest (no local paths)."""
        out = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if key != "path" and value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out


def _validate(t: Target, path: Path) -> None:
    def bad(key: str, why: str):
        raise ConfigError(f"'{path}': key '{key}' {why}")

    if t.name != path.stem:
        bad("name", f"is '{t.name}' but the file is '{path.name}'; make them equal")
    if len(set(t.precisions)) != len(t.precisions):
        bad("precisions", f"lists a precision twice: {list(t.precisions)}")
    if t.default_precision not in t.precisions:
        bad("default_precision", f"is '{t.default_precision}', which is not in precisions {list(t.precisions)}")
    if t.threads < 1:
        bad("threads", f"must be at least 1, got {t.threads}")
    if t.latency_budget_ms <= 0:
        bad("latency_budget_ms", f"must be positive, got {t.latency_budget_ms}")
    if not 0 <= t.accuracy_tolerance_pts <= 100:
        bad("accuracy_tolerance_pts", f"must be between 0 and 100 points, got {t.accuracy_tolerance_pts}")
    if t.runtime != "tensorrt":
        for key in TENSORRT_ONLY:
            if getattr(t, key) is not None:
                bad(key, f"applies only to runtime 'tensorrt', and this target's runtime is '{t.runtime}'; remove it")
    for key in ("dla_cores",):
        if getattr(t, key) is not None and getattr(t, key) < 0:
            bad(key, f"must be 0 or more, got {getattr(t, key)}")
    for key in ("workspace_mb", "onnx_opset"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            bad(key, f"must be positive, got {getattr(t, key)}")

    from edgetl.quantize.recipes import load_recipe

    try:
        load_recipe(t.calibration)
    except ConfigError as exc:
        bad("calibration", f"names recipe '{t.calibration}', which does not load: {exc}")


def load_target(name_or_path: str | Path) -> Target:
    """A target by name (targets/<name>.yaml) or by path to a YAML file."""
    return load_config(Target, name_or_path, TARGETS_DIR, "target", _validate)


def list_targets() -> list[Target]:
    return [load_target(p) for p in sorted(TARGETS_DIR.glob("*.yaml"))]
