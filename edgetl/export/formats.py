"""The one table of export formats (in the spirit of Ultralytics' exporter table).

A row says which file a format writes, which device runtime backend runs it, which
precisions it can produce, and which functions export and validate it. Export, the
post-export validation and the test matrix all iterate this table, so a new format is one
row plus its module. Exporters and validators are "module:function" strings imported on
use: the torch/converter stacks load only for the format being built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.quantize.recipes import CalibrationRecipe


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    backend: str  # key in edgetl.runtime.backends.BACKENDS
    runtime: str  # the Target.runtime this format serves
    precisions: tuple[str, ...]
    exporter: str  # "module:function", called as exporter(ExportRequest, out_path) -> Exported
    validator: str  # "module:function", called as validator(path, precision) -> dict of facts
    description: str
    # Backend the host scores this format with when the device's runtime does not run on the
    # host (TensorRT engines are built on the device; the host runs the same ONNX on onnxruntime).
    host_backend: str | None = None

    def export(self, request: "ExportRequest", out_path: Path) -> "Exported":
        return _resolve(self.exporter)(request, out_path)

    def validate(self, path: Path, precision: str) -> dict:
        return _resolve(self.validator)(path, precision)


@dataclass(frozen=True)
class ExportRequest:
    module: Any  # torch nn.Module in eval mode, NCHW input; outputs the embedding (or logits, fused)
    size: int  # square input side
    layout: str  # NHWC or NCHW, the layout of the exported model's input
    precision: str
    recipe: CalibrationRecipe
    # Calibration arrays ([1, ...] float32 in `layout`), built only when the precision needs them.
    calibration: Callable[[], list[np.ndarray]]
    threads: int = 2
    # An FP32 artifact of the same module this format already exported; quantizers may start
    # from it instead of converting again.
    base: Path | None = None
    target: Any = None  # the Target, for formats whose output depends on the device stack (ONNX opset)


@dataclass(frozen=True)
class Exported:
    path: Path
    io: dict  # input/output name, dtype, shape (and quantization) as the manifest records them
    info: dict  # converter-specific facts for the manifest (calibration used, quantizer, ...)
    extra_files: dict[str, Path] = field(default_factory=dict)  # more bundle files (name -> path)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("tflite", ".tflite", "tflite", "tflite", ("fp32", "fp16", "int8"),
               "edgetl.export.tflite:export_tflite", "edgetl.export.tflite:validate_tflite",
               "LiteRT flatbuffer via litert-torch; FP16 weights / full-integer INT8 via ai-edge-quantizer"),
        Format("tensorrt", ".onnx", "tensorrt", "tensorrt", ("fp32", "fp16", "int8"),
               "edgetl.export.tensorrt:export_tensorrt", "edgetl.export.tensorrt:validate_tensorrt",
               "ONNX for TensorRT (engine built on the device); INT8 as QDQ ONNX via onnxruntime quantize_static",
               host_backend="onnxruntime"),
    ]
}


def _resolve(ref: str) -> Callable:
    module, func = ref.split(":")
    return getattr(importlib.import_module(module), func)


def format_for(runtime: str) -> Format:
    for f in FORMATS.values():
        if f.runtime == runtime:
            return f
    raise EdgetlError(f"no export format serves runtime '{runtime}'; known formats: {', '.join(FORMATS)}")
