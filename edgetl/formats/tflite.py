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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

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


def _static_quantizer(fp32_path: Path, recipe: CalibrationRecipe, activation_bits: int = 8,
                      float_tensors: Sequence[str] = ()):
    """An ai-edge-quantizer Quantizer with the static recipe: every supported op int8 weights
    and `activation_bits` activations, except the ops named in `float_tensors`."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    check_recipe(recipe)
    if activation_bits not in (8, 16):
        raise EdgetlError(f"activation_bits must be 8 or 16, not {activation_bits!r}")
    granularity = qtyping.QuantGranularity.CHANNELWISE if recipe.per_channel_weights else \
        qtyping.QuantGranularity.TENSORWISE
    q = quantizer.Quantizer(str(fp32_path))
    q.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                        activation_num_bits=activation_bits, weight_num_bits=8, weight_granularity=granularity)
    for name in float_tensors:
        # The quantizer matches an op by its scope: its output tensor names, each followed by ";".
        q.update_quantization_recipe(regex=f"^{re.escape(name)};",
                                     operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                     algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return q


@dataclass(frozen=True)
class Ranges:
    """Calibrated activation ranges of one FP32 model (ai-edge-quantizer QSVs) and how many
    images gave them."""

    qsvs: dict
    samples: int


def calibrate_int8(fp32_path: Path, calibration: Iterable[np.ndarray], recipe: CalibrationRecipe, input_name: str,
                   signature: str = "serving_default", threads: int = 2) -> Ranges:
    """Activation ranges of every quantizable tensor of `fp32_path` over `calibration`.

    Args:
        fp32_path: the FP32 .tflite.
        calibration: float32 arrays [1, ...] in the model's layout.
        recipe: the calibration recipe; its method picks the range merge (minmax, moving_average).
        input_name, signature: the model's signature input and key.
        threads: calibration interpreter threads.

    Returns:
        The ranges, reusable by `quantize_int8` for any activation width and any set of
        float ops: the recovery ladder calibrates once and quantizes many variants.

    Raises:
        EdgetlError: no calibration images, or a recipe LiteRT's kernels cannot take.
    """
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    q = _static_quantizer(fp32_path, recipe)
    samples = [{input_name: np.asarray(x, np.float32)} for x in calibration]
    if not samples:
        raise EdgetlError("INT8 export needs calibration images and none were found; pass --calib DATA")
    update = qsv_utils.min_max_update if recipe.method == "minmax" else qsv_utils.moving_average_update
    with _quiet_tqdm():
        # Quantizer.calibrate() always merges with the moving average; the Calibrator takes
        # the merge function, which is how the recipe's method reaches the quantizer.
        calib = calibrator.Calibrator(bytes(fp32_path.read_bytes()), num_threads=threads, qsv_update_func=update)
        recipes = recipe_manager.RecipeManager()
        recipes.load_quantization_recipe(q.get_quantization_recipe())
        calib.calibrate({signature: samples}, recipes)
    return Ranges(calib.get_model_qsvs(), len(samples))


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Iterable[np.ndarray] | None, recipe: CalibrationRecipe,
                  input_name: str, signature: str = "serving_default", threads: int = 2, activation_bits: int = 8,
                  float_tensors: Sequence[str] = (), ranges: Ranges | None = None) -> int:
    """Full-integer quantization with ai-edge-quantizer, statically calibrated.

    Args:
        fp32_path: the FP32 .tflite to quantize.
        out_path: where to write the quantized model.
        calibration: float32 arrays [1, ...] in the model's layout (unused when `ranges` is given).
        recipe: the calibration recipe (method minmax or moving_average).
        input_name, signature: the model's signature input and key.
        threads: calibration interpreter threads.
        activation_bits: 8 (static_wi8_ai8, the default: int8 weights, activations and model
            I/O) or 16 (static_wi8_ai16: int16 activations and I/O, int8 weights).
        float_tensors: first output tensor names of ops that stay float; the recovery ladder
            keeps its most sensitive layers in float this way.
        ranges: from `calibrate_int8` on the same model, to skip calibrating again.

    Returns:
        The number of calibration samples used.

    Raises:
        EdgetlError: no calibration images, or a recipe LiteRT's kernels cannot take.
    """
    if ranges is None:
        ranges = calibrate_int8(fp32_path, calibration, recipe, input_name, signature, threads)
    q = _static_quantizer(fp32_path, recipe, activation_bits, float_tensors)
    with _quiet_tqdm():
        result = q.quantize(ranges.qsvs, enable_progress_report=False)
    result.export_model(str(out_path), overwrite=True)
    return ranges.samples


# -- XNNPACK partitions ---------------------------------------------------------------------

def xnnpack_partitions(path: str | Path, threads: int = 1) -> tuple[int, list[str]]:
    """How LiteRT's default XNNPACK delegate splits a model: (partitions, undelegated ops).

    A delegated graph lists its original nodes and one DELEGATE node per partition; a
    partition's nodes are those between the DELEGATE node's inputs and outputs, found by
    walking back from its outputs through their producers. Every other original node runs
    on LiteRT's reference kernels, between partitions.

    Args:
        path: a .tflite file.
        threads: interpreter threads (the partitioning does not depend on it).

    Returns:
        (number of XNNPACK partitions, op names of the nodes left outside them, in graph order).
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()  # the default delegate is applied here
    ops = interpreter._get_ops_details()  # noqa: SLF001 (LiteRT has no public node list)
    producer = {int(t): op["index"] for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    covered: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            node = producer.get(t)
            if t in boundary or node is None or node in covered:
                continue
            covered.add(node)
            stack.extend(int(i) for i in ops[node]["inputs"] if i >= 0)
    outside = [op["op_name"] for op in ops if op["op_name"] != "DELEGATE" and op["index"] not in covered]
    return len(delegates), outside


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


def int8_source_path(fp32_path: Path) -> Path:
    """Where the int8-delegable FP32 graph of `fp32_path`'s module is written (beside it)."""
    return fp32_path.with_name(f"{fp32_path.stem}.delegable{fp32_path.suffix}")


def _int8_source(request: ExportRequest, out_path: Path) -> tuple[Path, dict, list[Path]]:
    """The FP32 graph INT8 is quantized from, what was rewritten, and temporary files.

    A module with hard-swish / hard-sigmoid is converted again through
    `edgetl.formats.delegable` (so the INT8 graph stays one XNNPACK partition); the FP32
    artifact keeps XNNPACK's fused float HARD_SWISH, 6-10 % faster at 1 thread on MobileNetV3
    than the rewritten float graph (docs/benchmarks.md, "XNNPACK partitions and INT8 speed
    (issue 16)", benchmarks/bench_partitions.py). Beside a `base` the
    rewritten graph is kept and reused, so the recovery ladder re-quantizes without
    converting again; the bundle writer drops it since no manifest lists it.
    """
    from edgetl.formats.delegable import count_rewrites, make_delegable

    rewrites = dict(count_rewrites(request.module))
    if not rewrites:
        if request.base is not None:
            return request.base, {}, []
        source = out_path.with_name(out_path.stem + ".fp32.tflite")
        convert_fp32(request.module, request.size, request.layout, source)
        return source, {}, [source]
    source = int8_source_path(request.base if request.base is not None else out_path)
    if request.base is None or not source.is_file():
        convert_fp32(make_delegable(request.module), request.size, request.layout, source)
    return source, rewrites, [] if request.base is not None else [source]


def export(request: ExportRequest, out_path: Path) -> Exported:
    """Write `request.module` as a .tflite of `request.precision` to `out_path`.

    Args:
        request: module, size, layout, precision, recipe, calibration; `base` (an FP32
            .tflite of the same module) saves the FP32 conversion for fp16 / int8.
        out_path: the file to write.

    Returns:
        The Exported artifact: its I/O as the manifest records it and the converter facts
        (quantizer, calibration, and for int8 the graph rewrite when one was applied).

    Raises:
        EdgetlError: a recipe LiteRT cannot take, or no calibration images for int8.
    """
    out_path = Path(out_path)
    info: dict = {"converter": "litert-torch"}
    if request.precision == "int8":
        check_recipe(request.recipe)  # fail before the slow conversion, not after
        source, rewrites, temporary = _int8_source(request, out_path)
        io = describe_io(source, request.layout)
        n = quantize_int8(source, out_path, request.calibration(), request.recipe, io["input"]["signature_input"],
                          io["input"]["signature"], request.threads)
        info["quantizer"] = "ai-edge-quantizer static_wi8_ai8 (full integer, int8 I/O)"
        info["calibration"] = {**request.recipe.to_dict(), "images": n}
        if rewrites:
            info["graph_rewrite"] = {"replaced": rewrites, "by": "edgetl.formats.delegable (int8 XNNPACK ops)"}
        for path in temporary:
            path.unlink()
        return Exported(out_path, describe_io(out_path, request.layout), info)
    if request.base is not None and request.precision != "fp32":
        fp32_path = request.base
    else:
        fp32_path = out_path if request.precision == "fp32" else out_path.with_name(out_path.stem + ".fp32.tflite")
        convert_fp32(request.module, request.size, request.layout, fp32_path)
    if request.precision == "fp16":
        quantize_fp16(fp32_path, out_path)
        info["quantizer"] = "ai-edge-quantizer float casting (fp16 weights)"
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
    partitions, outside = xnnpack_partitions(path)
    facts = {"tensor_dtypes": dtypes, "size_bytes": path.stat().st_size,
             "xnnpack": {"partitions": partitions, "undelegated_ops": outside}}
    problem = None
    if precision == "int8":
        if np.dtype(inp["dtype"]) != np.int8 or np.dtype(out["dtype"]) != np.int8:
            problem = f"has {np.dtype(inp['dtype']).name}/{np.dtype(out['dtype']).name} model I/O, not int8"
        elif dtypes.get("int8", 0) == 0:
            problem = "has no int8 tensors"
    elif precision == "int16x8":  # the recovery ladder's int16 activations, int8 weights
        if np.dtype(inp["dtype"]) != np.int16 or np.dtype(out["dtype"]) != np.int16:
            problem = f"has {np.dtype(inp['dtype']).name}/{np.dtype(out['dtype']).name} model I/O, not int16"
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
