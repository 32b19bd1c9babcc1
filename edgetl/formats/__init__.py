"""Export formats: one module each with its whole life (edgetl/formats/tflite.py,
edgetl/formats/onnx_tensorrt.py), and the one table that names them (in the spirit of
Ultralytics' exporter table).

A row says which file a format writes, which device runtime backend runs it, which
precisions it can produce, and its module, whose `export`, `validate` and
`precision_refusal` functions the export pipeline calls. Export, the post-export
validation and the test matrix all iterate this table, so a new format is one row plus its
module. Modules are imported on use: the torch/converter stacks load only for the format
being built.
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
    backend: str  # key in edgetl.backends.BACKENDS: what runs it on the device
    runtime: str  # the Target.runtime this format serves
    precisions: tuple[str, ...]
    module: str  # edgetl.formats.<module>: export(request, out_path), validate(path, precision), precision_refusal
    description: str
    # Backend the host scores this format with when the device's runtime does not run on the
    # host (TensorRT engines are built on the device; the host runs the same ONNX on onnxruntime).
    host_backend: str | None = None

    def _impl(self):
        return importlib.import_module(f"edgetl.formats.{self.module}")

    def export(self, request: "ExportRequest", out_path: Path) -> "Exported":
        """Write the artifact for `request.precision` to `out_path`."""
        return self._impl().export(request, out_path)

    def validate(self, path: Path, precision: str) -> dict:
        """Check the artifact is what `precision` promises; facts for the manifest."""
        return self._impl().validate(path, precision)

    def refusal(self, target, precision: str) -> str | None:
        """Why `target` cannot run `precision` in this format (the hardware's reason), or None."""
        if precision not in self.precisions:
            return f"format '{self.name}' cannot produce '{precision}' (it offers {list(self.precisions)})"
        return self._impl().precision_refusal(target, precision)


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
               "tflite",
               "LiteRT flatbuffer via litert-torch; FP16 weights / full-integer INT8 via ai-edge-quantizer"),
        Format("tensorrt", ".onnx", "tensorrt", "tensorrt", ("fp32", "fp16", "int8"),
               "onnx_tensorrt",
               "ONNX for TensorRT (engine built on the device); INT8 as QDQ ONNX via onnxruntime quantize_static",
               host_backend="onnxruntime"),
    ]
}


def format_for(runtime: str) -> Format:
    for f in FORMATS.values():
        if f.runtime == runtime:
            return f
    raise EdgetlError(f"no export format serves runtime '{runtime}'; known formats: {', '.join(FORMATS)}")
