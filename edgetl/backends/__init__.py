"""Inference backends (torch-free), keyed by the manifest's `backend` string and imported
lazily, so a device needs only the one runtime its bundle uses (ai-edge-litert, onnxruntime
or TensorRT).

Every backend takes a float32 batch in the model's layout and returns float32 embeddings
[N, D]; quantized model I/O is handled inside, with the tensor's own scale and zero point.
`Backbone` is a bundle's backbone ready to run: preprocessing + backend. The runtime's
Predictor and the on-device adaptation both embed through it.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from edgetl.bundle import Bundle
from edgetl.core.preprocess import ImageLike, Preprocess
from edgetl.errors import EdgetlError

log = logging.getLogger("edgetl")

MAX_THREADS = 256

# backend name -> "module:class"; a new runtime is one row and one module.
BACKENDS: dict[str, str] = {
    "tflite": "edgetl.backends.tflite:TFLiteBackend",
    "onnxruntime": "edgetl.backends.onnxrt:OnnxRuntimeBackend",
    "tensorrt": "edgetl.backends.tensorrt:TensorRTBackend",
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


def check_threads(threads: int | None) -> int | None:
    """A thread count a backend can take: LiteRT crashes (SIGSEGV) on absurd ones."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise EdgetlError(f"threads must be a whole number from 1 to {MAX_THREADS}, not {threads!r}")
    return threads


def open_backend(name: str, path: Path, io: dict, threads: int | None) -> Backend:
    check_threads(threads)
    if name not in BACKENDS:
        raise EdgetlError(f"bundle backend '{name}' is not one of {', '.join(BACKENDS)}; "
                          "re-export the bundle for a supported runtime")
    module_name, cls_name = BACKENDS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)(Path(path), io, threads)


def _as_list(images) -> list:
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    return list(images)


class Backbone:
    """A bundle's backbone on its backend: images -> embeddings [N, D] (float32)."""

    def __init__(self, preprocess: Preprocess, backend: Backend, embedding_dim: int, input_shape: Sequence[int]):
        self.preprocess = preprocess
        self.backend = backend
        self.embedding_dim = int(embedding_dim)
        self._input_shape = tuple(int(v) for v in input_shape[1:])

    @classmethod
    def open(cls, bundle: Bundle, threads: int | None = None) -> "Backbone":
        """Load `bundle`'s model on its backend with `threads` (default: the target's, else every core)."""
        m = bundle.manifest
        threads = check_threads(threads)
        cpus = os.cpu_count() or 1
        if threads and threads > cpus:
            # More threads than cores only slows LiteRT down, and each one reserves a stack
            # (8 MB): 256 of them exhaust a 32-bit board's or a memory-limited service's
            # address space, which surfaces as a failed model load or a MemoryError.
            log.warning("%d inference threads asked for, but this machine has %d CPUs; using %d", threads, cpus, cpus)
            threads = cpus
        threads = threads or m.threads or cpus
        backend = open_backend(m.backend, bundle.model_path, m.model, threads)
        return cls(bundle.preprocess, backend, m.embedding_dim, m.model["input"]["shape"])

    def prepare(self, items: Sequence) -> np.ndarray:
        """Preprocess a list of images (paths, PIL images, uint8 HWC arrays) into one batch;
        float32 arrays already in the model's input shape pass through."""
        arrays = []
        for item in items:
            if isinstance(item, np.ndarray) and item.dtype == np.float32 and item.shape == self._input_shape:
                arrays.append(item)
            else:
                arrays.append(self.preprocess.batch([item])[0])
        return np.stack(arrays)

    def embed(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16) -> np.ndarray:
        """Embeddings [N, D] of images, or of a float32 batch [N, ...] already preprocessed."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.float32:
            return self.backend.run(images)
        items = _as_list(images)
        if not items:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate([self.backend.run(self.prepare(items[i:i + batch_size]))
                               for i in range(0, len(items), batch_size)])
