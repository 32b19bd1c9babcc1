"""Inference backends, keyed by the manifest's `backend` string and imported lazily, so a
device needs only the one runtime its bundle uses (ai-edge-litert, onnxruntime or TensorRT).

Every backend takes a float32 batch in the model's layout and returns float32 embeddings
[N, D]; quantized model I/O is handled inside, with the tensor's own scale and zero point.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError

# backend name -> "module:class"; a new runtime is one row and one module.
BACKENDS: dict[str, str] = {
    "tflite": "edgetl.runtime.backends.tflite:TFLiteBackend",
    "onnxruntime": "edgetl.runtime.backends.onnxrt:OnnxRuntimeBackend",
    "tensorrt": "edgetl.runtime.backends.tensorrt:TensorRTBackend",
}


class Backend:
    """Runs one model file. `io` is the manifest's `model` entry (input name/dtype/shape/layout)."""

    name = "?"

    def __init__(self, path: Path, io: dict, threads: int | None):
        self.path = Path(path)
        self.io = io
        self.threads = threads

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """q = clip(round(x / scale + zero_point)), in float32 and in place: on a Pi this runs
    once per frame, and float64 temporaries would double its cost."""
    info = np.iinfo(dtype)
    y = np.asarray(x, dtype=np.float32) / np.float32(scale)
    y += np.float32(zero_point)
    np.rint(y, out=y)
    np.clip(y, info.min, info.max, out=y)
    return y.astype(dtype)


def dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def open_backend(name: str, path: Path, io: dict, threads: int | None) -> Backend:
    if name not in BACKENDS:
        raise EdgetlError(f"bundle backend '{name}' is not one of {', '.join(BACKENDS)}; "
                          "re-export the bundle for a supported runtime")
    module_name, cls_name = BACKENDS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)(Path(path), io, threads)
