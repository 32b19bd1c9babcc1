"""TensorRT backend: runs the engine `edgetl-device build-engine` built for this device.

Device memory is moved with cuda-python (cudart), so pycuda is not needed. TensorRT >= 8.5
runs through named tensors (`set_input_shape`, `set_tensor_address`, `execute_async_v3`,
the only API left in 10.x); TensorRT 8.2 (JetPack 4) through binding indices
(`set_binding_shape`, `execute_async_v2`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.backends import Backend
from edgetl.backends.engine import (check_engine, cuda_check, current_gpu, engine_key, engine_path, execute_api,
                                   import_cudart, import_tensorrt)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path, io: dict, threads: int | None):
        super().__init__(path, io, threads)
        trt = import_tensorrt()
        self.cudart = import_cudart()
        bundle_dir = Path(path).parent
        key = engine_key(bundle_dir, *current_gpu(), trt.__version__)
        engine_file = engine_path(bundle_dir, key)
        record = check_engine(engine_file, key)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise EdgetlError(f"TensorRT {trt.__version__} cannot deserialize '{engine_file}'; "
                              f"rebuild it with `edgetl-device build-engine {bundle_dir}`")
        self.context = self.engine.create_execution_context()
        self.api = execute_api(trt.__version__)
        plan = record["plan"]
        self.max_batch = int(plan["max_batch"])
        self.min_batch = int(plan["min_batch"])
        self.input_name = io["input"]["name"]
        self.output_name = io["output"]["name"]
        self.input_shape = tuple(int(v) for v in io["input"]["shape"][1:])
        if self.api == "v3":
            out_dtype = self.engine.get_tensor_dtype(self.output_name)
            self.out_tail = tuple(self.engine.get_tensor_shape(self.output_name))[1:]
        else:
            out_dtype = self.engine.get_binding_dtype(self.engine.get_binding_index(self.output_name))
            self.out_tail = tuple(self.engine.get_binding_shape(self.engine.get_binding_index(self.output_name)))[1:]
        self.out_dtype = np.dtype(trt.nptype(out_dtype))
        self.stream = cuda_check(self.cudart.cudaStreamCreate())
        in_bytes = self.max_batch * int(np.prod(self.input_shape)) * 4
        out_bytes = self.max_batch * int(np.prod(self.out_tail)) * self.out_dtype.itemsize
        self.d_input = cuda_check(self.cudart.cudaMalloc(in_bytes))
        self.d_output = cuda_check(self.cudart.cudaMalloc(out_bytes))

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        y = np.empty((n, *self.out_tail), dtype=self.out_dtype)
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(self.cudart.cudaMemcpyAsync(self.d_input, x.ctypes.data, x.nbytes, h2d, self.stream))
        if self.api == "v3":
            self.context.set_input_shape(self.input_name, x.shape)
            self.context.set_tensor_address(self.input_name, int(self.d_input))
            self.context.set_tensor_address(self.output_name, int(self.d_output))
            ok = self.context.execute_async_v3(int(self.stream))
        else:
            in_idx = self.engine.get_binding_index(self.input_name)
            out_idx = self.engine.get_binding_index(self.output_name)
            self.context.set_binding_shape(in_idx, x.shape)
            bindings = [0] * self.engine.num_bindings
            bindings[in_idx], bindings[out_idx] = int(self.d_input), int(self.d_output)
            ok = self.context.execute_async_v2(bindings, int(self.stream))
        if not ok:
            raise EdgetlError(f"TensorRT failed to run '{self.path}' on a batch of {n}")
        cuda_check(self.cudart.cudaMemcpyAsync(y.ctypes.data, self.d_output, y.nbytes, d2h, self.stream))
        cuda_check(self.cudart.cudaStreamSynchronize(self.stream))
        return y.reshape(n, -1).astype(np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(batch), self.max_batch):
            chunk = batch[i:i + self.max_batch]
            if len(chunk) < self.min_batch:  # DLA engines have one fixed batch: pad, then drop the padding
                pad = np.zeros((self.min_batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
                out.append(self._invoke(np.concatenate([chunk, pad]))[:len(chunk)])
            else:
                out.append(self._invoke(chunk))
        return np.concatenate(out)

    def __del__(self):
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for ptr in (getattr(self, "d_input", None), getattr(self, "d_output", None)):
            if ptr is not None:
                cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
