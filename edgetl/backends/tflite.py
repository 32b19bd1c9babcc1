"""LiteRT (TFLite) backend: ai-edge-litert's Interpreter, or tflite-runtime on older boards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.backends import Backend, dequantize, quantize


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise EdgetlError("this bundle needs a LiteRT interpreter: pip install ai-edge-litert "
                              "(or tflite-runtime on boards without ai-edge-litert wheels)") from None
    return Interpreter


class TFLiteBackend(Backend):
    name = "tflite"

    def __init__(self, path: Path, io: dict, threads: int | None):
        super().__init__(path, io, threads)
        try:
            self.interpreter = _interpreter_class()(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgetlError(f"LiteRT cannot load '{path}' ({exc}); re-export the bundle") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        shape = [int(v) for v in self.input["shape"]]
        expected = [int(v) for v in io["input"]["shape"]]
        if shape != expected:
            raise EdgetlError(f"'{path}' takes input shape {shape} but the manifest says {expected}; re-export the bundle")
        self.batch_size = shape[0]

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        scale, zero_point = self.input["quantization"]
        dtype = self.input["dtype"]
        x = quantize(batch, scale, zero_point, dtype) if scale else np.ascontiguousarray(batch, dtype=dtype)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        out_scale, out_zero_point = self.output["quantization"]
        return dequantize(y, out_scale, out_zero_point) if out_scale else y.astype(np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        # Bundles are exported for batch 1 (what a camera loop runs); a batch is a loop.
        n = self.batch_size
        out = [self._invoke(batch[i:i + n]) for i in range(0, len(batch), n)]
        return np.concatenate(out).reshape(len(batch), -1)
