"""onnxruntime backend (CPU, or whichever execution providers the device's build offers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.backends import Backend, dequantize, quantize

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, io: dict, threads: int | None):
        super().__init__(path, io, threads)
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgetlError("this bundle needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise EdgetlError(f"onnxruntime cannot load '{path}' ({exc}); re-export the bundle") from None
        self.input = self.session.get_inputs()[0]
        self.output_name = self.session.get_outputs()[0].name
        dim0 = self.input.shape[0]
        self.batch_size = dim0 if isinstance(dim0, int) and dim0 > 0 else None
        self.dtype = _NUMPY.get(self.input.type, np.float32)
        # int8 model I/O (rare for ONNX) follows the manifest's recorded scale/zero point.
        self.in_q = io["input"].get("quantization")
        self.out_q = io.get("output", {}).get("quantization")

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        x = quantize(batch, *self.in_q, self.dtype) if self.in_q else batch.astype(self.dtype)
        y = self.session.run([self.output_name], {self.input.name: x})[0]
        return dequantize(y, *self.out_q) if self.out_q else y.astype(np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        n = self.batch_size or len(batch)
        out = [self._invoke(batch[i:i + n]) for i in range(0, len(batch), n)]
        return np.concatenate(out).reshape(len(batch), -1)
