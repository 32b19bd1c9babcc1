"""INT8 and FP16 for LiteRT models with ai-edge-quantizer, applied to the FP32 .tflite.

Why ai-edge-quantizer and not PT2E: on EfficientNet-Lite0 it quantizes every tensor to
int8 (PT2E leaves residual ADDs in float, DEQUANTIZE/ADD/QUANTIZE islands), calibrates in
seconds on the already converted model instead of a second torch export + conversion, and
measured equal or better accuracy and speed (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterable

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.quantize.recipes import CalibrationRecipe, require_method

# Range estimators ai-edge-quantizer offers: its calibrator merges per-image min/max either
# with its default moving average or with a global min/max.
SUPPORTED_METHODS = ("minmax", "moving_average")
BACKEND = "the tflite exporter (ai-edge-quantizer)"


@contextlib.contextmanager
def _quiet_tqdm():
    # ai-edge-quantizer draws tqdm bars on stderr that cannot be switched off from its API;
    # the caller shows one rich progress line instead.
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def check_recipe(recipe: CalibrationRecipe) -> None:
    require_method(recipe, SUPPORTED_METHODS, BACKEND)
    if recipe.symmetric_activations:
        raise EdgetlError(f"calibration recipe '{recipe.name}' asks for symmetric activations, but LiteRT's int8 "
                          f"kernels take asymmetric int8 activations; set symmetric_activations: false in {recipe.path}")


def quantize_fp16(fp32_path: Path, out_path: Path) -> None:
    """FP16 weights, FP32 compute where the CPU lacks FP16 arithmetic (the TFLite FP16 scheme)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    q = quantizer.Quantizer(str(fp32_path))
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                             algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    with _quiet_tqdm():
        q.quantize(enable_progress_report=False).export_model(str(out_path), overwrite=True)


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Iterable[np.ndarray], recipe: CalibrationRecipe,
                  input_name: str, signature: str = "serving_default", threads: int = 2) -> int:
    """Full-integer INT8 (weights, activations and model I/O) statically calibrated on
    `calibration` (float32 arrays [1, ...] in the model's layout). Returns the sample count."""
    from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    check_recipe(recipe)
    granularity = qtyping.QuantGranularity.CHANNELWISE if recipe.per_channel_weights else \
        qtyping.QuantGranularity.TENSORWISE
    q = quantizer.Quantizer(str(fp32_path))
    q.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8,
                        weight_num_bits=8, weight_granularity=granularity)
    samples = [{input_name: np.asarray(x, np.float32)} for x in calibration]
    if not samples:
        raise EdgetlError("INT8 export needs calibration images and none were found; pass --calib DATA")
    data = {signature: samples}
    update = qsv_utils.min_max_update if recipe.method == "minmax" else qsv_utils.moving_average_update
    with _quiet_tqdm():
        # Quantizer.calibrate() always merges with the moving average; the Calibrator takes
        # the merge function, which is how the recipe's method reaches the quantizer.
        calib = calibrator.Calibrator(bytes(fp32_path.read_bytes()), num_threads=threads, qsv_update_func=update)
        recipes = recipe_manager.RecipeManager()
        recipes.load_quantization_recipe(q.get_quantization_recipe())
        calib.calibrate(data, recipes)
        result = q.quantize(calib.get_model_qsvs(), enable_progress_report=False)
    result.export_model(str(out_path), overwrite=True)
    return len(samples)
