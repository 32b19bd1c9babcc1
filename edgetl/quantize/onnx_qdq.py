"""INT8 explicit quantization for TensorRT: a QDQ ONNX from onnxruntime's `quantize_static`.

TensorRT reads QuantizeLinear/DequantizeLinear pairs as the precision plan (explicit
quantization, the only INT8 path left in TensorRT 11), so the settings follow what its
parser accepts and its Q/DQ placement guide recommends: symmetric int8 for weights (per
output channel) and activations, zero points 0, float biases (TensorRT fuses the bias in the
conv's own precision), Q/DQ on the inputs of convolutions and residual adds but not on their
outputs (TensorRT fuses conv + ReLU6 + the next layer's Q itself), a Q/DQ pair on each weight
and a dedicated pair per consumer. The calibration ranges are also written as a TensorRT calibration cache, for implicit
INT8 (`trtexec --int8 --calib=...`) on the FP32 ONNX with TensorRT 8.x.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgetl.errors import EdgetlError
from edgetl.export.onnx import quiet_root_logger
from edgetl.quantize.recipes import CalibrationRecipe, require_method

log = logging.getLogger("edgetl")

SUPPORTED_METHODS = ("minmax", "moving_average", "percentile", "entropy")


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds a preprocessed calibration batch [N, C, H, W], one image at a time.

    One image per run: onnxruntime's histogram collector stacks the outputs of all runs of a
    chunk, so every run must have the same batch size, whatever N is.
    """

    def __init__(self, arrays: np.ndarray, input_name: str, batch_size: int = 1):
        self.arrays = arrays
        self.input_name = input_name
        self.batch_size = batch_size
        self._next = 0

    def __len__(self) -> int:
        return (len(self.arrays) + self.batch_size - 1) // self.batch_size

    def get_next(self):
        if self._next >= len(self.arrays):
            return None
        chunk = self.arrays[self._next:self._next + self.batch_size]
        self._next += len(chunk)
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._next = 0


def ort_calibration(recipe: CalibrationRecipe):
    """(CalibrationMethod, calibrator options) for a recipe; refuses methods onnxruntime lacks."""
    from onnxruntime.quantization import CalibrationMethod

    require_method(recipe, SUPPORTED_METHODS, "the onnxruntime QDQ quantizer (TensorRT targets)")
    # TensorRT supports only zero-point-0 int8, so activation ranges are symmetric whatever
    # the recipe says for other backends.
    options = {"symmetric": True}
    if recipe.method in ("minmax", "moving_average"):
        method = CalibrationMethod.MinMax
        if recipe.method == "moving_average":
            options.update(moving_average=True, averaging_constant=0.05)
    elif recipe.method == "percentile":
        method = CalibrationMethod.Percentile
        options["percentile"] = float(recipe.percentile)
    else:
        method = CalibrationMethod.Entropy
    return method, options


# onnxruntime's histogram calibrators keep every intermediate tensor of every image they are
# given until the histograms are updated (~40 MB per 224x224 image on EfficientNet-Lite0), so
# images go in chunks: the histograms merge across chunks, memory stays bounded.
CALIBRATION_CHUNK = 32


TENSORRT_QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    # The weight-scale bump onnxruntime makes so an int32 bias stays representable only
    # costs weight precision when the bias stays float.
    "QDQDisableWeightAdjustForInt32Bias": True,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": True,
    "OpTypesToExcludeOutputQuantization": ["Conv", "Add"],
    # Keep Clip (ReLU6) explicit: TensorRT fuses it into the conv, and removing it would
    # change the graph's float semantics between the Q/DQ pairs.
    "QDQKeepRemovableActivations": True,
}
TENSORRT_QDQ_OPS = ["Conv", "Add"]


@dataclass(frozen=True)
class QdqResult:
    path: Path
    ranges: dict[str, tuple[float, float]]  # tensor -> (lowest, highest) from calibration
    method: str
    samples: int


def quantize_qdq(fp32_onnx: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray],
                 recipe: CalibrationRecipe) -> QdqResult:
    """Write the INT8 QDQ ONNX of `fp32_onnx`, calibrated on preprocessed NCHW `calibration` arrays
    (made by `edgetl.runtime.preprocess.Preprocess`, as on the device)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(calibration):
        raise EdgetlError("no calibration images: pass calibration data with images of the deployment classes")
    method, calib_options = ort_calibration(recipe)
    model = onnx.load(str(fp32_onnx), load_external_data=False)
    input_name = model.graph.input[0].name
    arrays = np.concatenate([np.asarray(a, np.float32).reshape(-1, *np.shape(a)[-3:]) for a in calibration])
    out_path = Path(out_path)
    chatter = io.StringIO()
    with quiet_root_logger(), tempfile.TemporaryDirectory(prefix="edgetl-qdq-") as tmp, \
            contextlib.redirect_stdout(chatter):
        # Shape inference only: export_onnx already folded the graph, and re-optimizing
        # would rename tensors the calibration cache refers to.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_optimization=True)
        calibrator = create_calibrator(prepared, TENSORRT_QDQ_OPS, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method, extra_options=calib_options)
        for start in range(0, len(arrays), CALIBRATION_CHUNK):
            calibrator.collect_data(ArrayCalibrationReader(arrays[start:start + CALIBRATION_CHUNK], input_name))
        data = calibrator.compute_data()
        del calibrator
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(data, cache)
        quantize_static(
            str(prepared), str(out_path), None,
            op_types_to_quantize=TENSORRT_QDQ_OPS,
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel_weights,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options=TENSORRT_QDQ_OPTIONS,
            calibration_cache_path=str(cache),
        )
    log.debug("onnxruntime calibration: %s", chatter.getvalue().strip())
    ranges = {name: (float(np.asarray(td.range_value[0]).item()), float(np.asarray(td.range_value[1]).item()))
              for name, td in data.data.items()}
    try:
        onnx.checker.check_model(str(out_path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EdgetlError(f"quantized '{out_path}' fails onnx.checker ({str(exc).splitlines()[0]})") from None
    return QdqResult(out_path, ranges, recipe.method, len(arrays))


def tensorrt_version_number(version: str) -> int:
    """'8.5.2' -> 8502, '10.3.0' -> 10300: NV_TENSORRT_VERSION, as calibration caches spell it."""
    parts = [int(p) for p in str(version).split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 1000 + parts[1] * 100 + parts[2]


def write_tensorrt_calibration_cache(ranges: dict[str, tuple[float, float]], path: str | Path, tensorrt: str) -> Path:
    """TensorRT's text calibration cache: header, then `tensor: <big-endian float32 scale>`.

    scale = amax / 127 (symmetric int8). The header names IInt8EntropyCalibrator2 because
    that is the calibrator `trtexec --calib` reads caches with; the scales themselves come
    from the recipe's method. TensorRT 10 rejects a cache whose header version differs from
    its own, so the version is the target's.
    """
    lines = [f"TRT-{tensorrt_version_number(tensorrt)}-EntropyCalibration2"]
    for name in sorted(ranges):
        lo, hi = ranges[name]
        amax = max(abs(lo), abs(hi))
        scale = amax / 127.0 if amax > 0 else 1.0 / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def read_tensorrt_calibration_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """(header, tensor -> scale) of a TensorRT text calibration cache."""
    header, *rows = Path(path).read_text(encoding="ascii").splitlines()
    scales = {}
    for row in rows:
        name, _, hexval = row.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(hexval))[0]
    return header, scales
