"""The TFLite (LiteRT) format, its whole host-side life: FP32 conversion with litert-torch,
FP16 / full-integer INT8 with ai-edge-quantizer on the FP32 flatbuffer, validation, and the
precisions a target can take. The device runs it with the `tflite` backend (ai-edge-litert).

Why ai-edge-quantizer and not PT2E: on EfficientNet-Lite0 it quantizes every tensor to
int8 (PT2E leaves residual ADDs in float, DEQUANTIZE/ADD/QUANTIZE islands), calibrates in
seconds on the already converted model instead of a second torch export + conversion, and
measured equal or better accuracy and speed (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.formats import Exported, ExportRequest
from edgetl.quantize.recipes import CalibrationRecipe, require_method


# -- quantization (ai-edge-quantizer) ---------------------------------------------------

# Range estimators ai-edge-quantizer offers: its calibrator merges per-image min/max either
# with its default moving average or with a global min/max.
SUPPORTED_METHODS = ("minmax", "moving_average")
QUANTIZER = "the tflite exporter (ai-edge-quantizer)"


@contextlib.contextmanager
def _quiet_tqdm():
    # ai-edge-quantizer draws tqdm bars on stderr that cannot be switched off from its API;
    # the caller shows one rich progress line instead.
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def check_recipe(recipe: CalibrationRecipe) -> None:
    require_method(recipe, SUPPORTED_METHODS, QUANTIZER)
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


# -- conversion and validation ------------------------------------------------------------

def _io_entry(detail: dict) -> dict:
    entry = {"name": detail["name"], "dtype": np.dtype(detail["dtype"]).name, "shape": [int(v) for v in detail["shape"]]}
    scale, zero_point = detail["quantization"]
    if scale:
        entry["quantization"] = [float(scale), int(zero_point)]
    return entry


def describe_io(path: Path, layout: str) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    signature = next(iter(interpreter.get_signature_list().items()), (None, {"inputs": [None]}))
    return {"input": {**_io_entry(inp), "layout": layout, "signature": signature[0],
                      "signature_input": signature[1]["inputs"][0]},
            "output": _io_entry(out)}


def convert_fp32(module, size: int, layout: str, out_path: Path) -> None:
    import litert_torch
    import torch

    # litert-torch prints its task tree on stdout, which would corrupt `--json` output; the
    # caller logs the stages instead.
    litert_torch.config.show_progress = False
    module = module.eval()
    if layout == "NHWC":
        # Channel-last I/O is what LiteRT and camera frames use, and it lets the converter drop
        # the PAD/TRANSPOSE pairs that TF-"SAME" padding would otherwise add to the graph.
        module = litert_torch.to_channel_last_io(module, args=[0]).eval()
        sample = torch.zeros(1, size, size, 3)
    else:
        sample = torch.zeros(1, 3, size, size)
    # It also logs every JAX-lowered op at INFO on the root logger; keep our log readable.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        with torch.no_grad():
            litert_torch.convert(module, (sample,)).export(str(out_path))
    finally:
        root.setLevel(level)


def export(request: ExportRequest, out_path: Path) -> Exported:
    out_path = Path(out_path)
    if request.precision == "int8":
        check_recipe(request.recipe)  # fail before the slow conversion, not after
    if request.base is not None and request.precision != "fp32":
        fp32_path = request.base
    else:
        fp32_path = out_path if request.precision == "fp32" else out_path.with_name(out_path.stem + ".fp32.tflite")
        convert_fp32(request.module, request.size, request.layout, fp32_path)
    info: dict = {"converter": "litert-torch"}
    if request.precision == "fp16":
        quantize_fp16(fp32_path, out_path)
        info["quantizer"] = "ai-edge-quantizer float casting (fp16 weights)"
    elif request.precision == "int8":
        io = describe_io(fp32_path, request.layout)
        calibration = request.calibration()
        n = quantize_int8(fp32_path, out_path, calibration, request.recipe, io["input"]["signature_input"],
                            io["input"]["signature"], request.threads)
        info["quantizer"] = "ai-edge-quantizer static_wi8_ai8 (full integer, int8 I/O)"
        info["calibration"] = {**request.recipe.to_dict(), "images": n}
    if fp32_path not in (out_path, request.base):
        fp32_path.unlink()
    return Exported(out_path, describe_io(out_path, request.layout), info)


def validate(path: Path, precision: str) -> dict:
    """Check the artifact is what `precision` promises; return facts for the manifest."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    dtypes: dict[str, int] = {}
    for t in interpreter.get_tensor_details():
        name = np.dtype(t["dtype"]).name
        dtypes[name] = dtypes.get(name, 0) + 1
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    facts = {"tensor_dtypes": dtypes, "size_bytes": path.stat().st_size}
    problem = None
    if precision == "int8":
        if np.dtype(inp["dtype"]) != np.int8 or np.dtype(out["dtype"]) != np.int8:
            problem = f"has {np.dtype(inp['dtype']).name}/{np.dtype(out['dtype']).name} model I/O, not int8"
        elif dtypes.get("int8", 0) == 0:
            problem = "has no int8 tensors"
    elif precision == "fp16" and dtypes.get("float16", 0) == 0:
        problem = "has no float16 weights"
    elif precision == "fp32" and set(dtypes) - {"float32", "int32"}:
        problem = f"has non-float tensors {sorted(set(dtypes) - {'float32', 'int32'})}"
    if problem:
        raise EdgetlError(f"exported '{path}' is not a valid {precision} model: it {problem}; "
                          "report this with the run and target")
    return facts


def precision_refusal(target, precision: str) -> str | None:
    """Why `target` cannot take `precision` as a TFLite bundle, or None. LiteRT runs fp32,
    fp16 weights and full-integer int8 on every ARM CPU, so only the target's own list limits it."""
    return None
