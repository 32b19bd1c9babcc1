"""The TensorRT (Jetson) format, its whole host-side life: ONNX export, INT8 QDQ quantization,
validation, and which precisions a target's GPU can run.

fp32: the ONNX backbone (TorchScript exporter, `dynamo=False`, because it writes any opset
TensorRT needs, 13 for TensorRT 8.2 up to 20; the dynamo exporter starts at 18), cleaned
with onnxruntime's basic constant folding and onnxscript's Pad-into-Conv fusion.
fp16: the same FP32 ONNX; FP16 is a TensorRT builder flag applied on the device, so the
host can only score the FP32 graph.
int8: an explicit-quantization QDQ ONNX from onnxruntime's `quantize_static`, scored on the
host with onnxruntime as the INT8 proxy, plus the FP32 ONNX and a TensorRT calibration cache
for implicit INT8 on TensorRT 8.x. TensorRT reads Q/DQ pairs as the precision plan (the
only INT8 path left in TensorRT 11), so the settings follow its Q/DQ placement guide:
symmetric int8 weights (per output channel, stored as int8 initializers that a
DequantizeLinear reads) and activations, zero points 0, float biases, Q/DQ on the inputs of
convolutions and residual adds, a dedicated pair per consumer. The recovery ladder
(edgetl/recovery.py, step c) may keep named nodes float (`float_nodes`: no Q/DQ, float32
weights), listed in the file's metadata so `validate` tells them from missed convs.

The engine itself is built on the device (edgetl/backends/engine.py); the device runs this
format with the `tensorrt` backend, the host scores it with `onnxruntime`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import shutil
import struct
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgetl.errors import EdgetlError
from edgetl.formats import Exported, ExportRequest
from edgetl.quantize.recipes import CalibrationRecipe, require_method


# -- ONNX export ---------------------------------------------------------------------------

log = logging.getLogger("edgetl")

INPUT_NAME = "input"
EMBEDDING_NAME = "embedding"
LOGITS_NAME = "logits"
EXPORTER = "torch.onnx.export(dynamo=False)"


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    input_name: str
    output_name: str
    max_abs_diff: float  # onnxruntime vs torch on the same batch


def _static_same_padding(model, size: int):
    """Replace timm's dynamic TF-'SAME' convs by a fixed pad for this input size.

    timm computes SAME padding from the runtime tensor shape, which exports as ~100
    Shape/Gather/Ceil nodes and a Pad per strided conv. The input size is fixed per bundle,
    so the pads are constants; onnxruntime's optimizer then folds each Pad into its Conv.
    """
    import torch
    import torch.nn.functional as F
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
    from timm.layers.padding import get_same_padding

    class StaticSameConv(torch.nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(F.pad(x, self.same_pad), self.weight, self.bias)

    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: shapes.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, m in model.named_modules() if isinstance(m, (Conv2dSame, Conv2dSameExport))]
    if not hooks:
        return model
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, (ih, iw) in shapes.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        new = StaticSameConv(old.in_channels, old.out_channels, old.kernel_size, old.stride, 0,
                             old.dilation, old.groups, old.bias is not None)
        new.load_state_dict(old.state_dict())
        ph = get_same_padding(ih, old.kernel_size[0], old.stride[0], old.dilation[0])
        pw = get_same_padding(iw, old.kernel_size[1], old.stride[1], old.dilation[1])
        new.same_pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        setattr(parent, attr, new)
    return model


def export_onnx(module, size: int, out_path: str | Path, opset: int, output_name: str = EMBEDDING_NAME,
                check_images: np.ndarray | None = None) -> OnnxExport:
    """Write `module` (NCHW image -> embedding, or logits for a fused model) as ONNX.

    The batch dimension is dynamic; height and width are `size`. The file passes
    `onnx.checker` (full check, with shape inference) and onnxruntime must reproduce torch on
    `check_images` (NCHW float32; random if not given) before this returns.
    """
    import copy

    import onnx
    import torch

    out_path = Path(out_path)
    module = _static_same_padding(copy.deepcopy(module).eval(), size)
    if check_images is None:
        check_images = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    sample = torch.from_numpy(check_images[:1])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is chosen on purpose; its notes are noise here
        torch.onnx.export(
            module, (sample,), str(out_path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[output_name],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            do_constant_folding=True,
        )
    _simplify(out_path)
    try:
        onnx.checker.check_model(str(out_path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EdgetlError(f"exported '{out_path}' fails onnx.checker ({str(exc).splitlines()[0]}); "
                          f"try another opset than {opset}") from None
    with torch.no_grad():
        expected = module(torch.from_numpy(check_images)).numpy()
    got = run_onnx(out_path, check_images)
    diff = float(np.max(np.abs(got - expected)))
    scale = float(np.max(np.abs(expected))) or 1.0
    if not math.isfinite(diff) or diff > 1e-3 * max(1.0, scale):
        raise EdgetlError(f"'{out_path}' disagrees with torch by {diff:.3g} (max abs); the ONNX export is wrong, "
                          "report it with the run")
    log.debug("ONNX export %s: opset %d, max |ort - torch| = %.2e", out_path, opset, diff)
    return OnnxExport(out_path, opset, INPUT_NAME, output_name, diff)


@contextlib.contextmanager
def quiet_root_logger():
    """onnxruntime's quantizer and onnxscript's optimizer log per-node chatter at INFO on the
    root logger (which the CLI shows); keep only their warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _simplify(path: Path) -> None:
    """Fold constants and fuse the SAME pads into their convs, in place."""
    import onnx
    import onnxruntime as ort
    import onnxscript.optimizer
    from onnxscript import rewriter
    from onnxscript.rewriter.rules.common import fuse_pad_into_conv_rule

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(path)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    with quiet_root_logger():
        model = rewriter.rewrite(onnx.load(str(path)), pattern_rewrite_rules=[fuse_pad_into_conv_rule])
        model = onnxscript.optimizer.optimize(model)
    # onnxruntime lists its own domains in every model it saves; TensorRT needs only the ONNX one.
    used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.save(model, str(path))


def run_onnx(path: str | Path, images: np.ndarray, threads: int = 0) -> np.ndarray:
    """First output of an ONNX model on the CPU through onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: images})[0]


# -- INT8: QDQ ONNX with onnxruntime's quantize_static ---------------------------------------

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
    # Weights are stored as int8 initializers read by a DequantizeLinear, the form TensorRT's
    # Q/DQ guide and onnxruntime both take. With a float weight + QuantizeLinear pair per
    # weight (AddQDQPairToWeight) the Lite0 INT8 file was 13.6 MB, larger than its 13.4 MB
    # FP32 ONNX; stored as int8 it is 0.27x of it with the same scales (docs/benchmarks.md).
    "AddQDQPairToWeight": False,
    "DedicatedQDQPair": True,
    "OpTypesToExcludeOutputQuantization": ["Conv", "Add"],
    # Keep Clip (ReLU6) explicit: TensorRT fuses it into the conv, and removing it would
    # change the graph's float semantics between the Q/DQ pairs.
    "QDQKeepRemovableActivations": True,
}
TENSORRT_QDQ_OPS = ["Conv", "Add"]


@dataclass(frozen=True)
class QdqRanges:
    """Activation ranges from one calibration pass: onnxruntime's JSON range cache, which
    `quantize_qdq(ranges=...)` re-uses so several variants (the recovery ladder's float
    blocks) quantize without calibrating again."""

    cache: Path
    method: str
    samples: int


@dataclass(frozen=True)
class QdqResult:
    path: Path
    ranges: dict[str, tuple[float, float]]  # tensor -> (lowest, highest) from calibration
    method: str
    samples: int
    float_nodes: tuple[str, ...] = ()  # nodes left unquantized (recovery step c)


# Metadata key under which a QDQ ONNX lists the nodes kept float on purpose (JSON list), so
# `validate` tells them from convs the quantizer missed, and a reader sees them in the file.
FLOAT_NODES_KEY = "edgetl.float_nodes"


def _prepared(fp32_onnx: str | Path, folder: Path) -> Path:
    """Shape inference only: export_onnx already folded the graph, and re-optimizing would
    rename tensors (and nodes) the range cache and `float_nodes` refer to."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder / "prepared.onnx"
    quant_pre_process(str(fp32_onnx), str(prepared), skip_optimization=True)
    return prepared


def calibrate_qdq(fp32_onnx: str | Path, calibration: Sequence[np.ndarray], recipe: CalibrationRecipe,
                  cache_path: str | Path) -> QdqRanges:
    """Collect the activation ranges of `fp32_onnx` on preprocessed NCHW `calibration` arrays.

    Args:
        fp32_onnx: the FP32 ONNX from `export_onnx`.
        calibration: preprocessed NCHW float32 arrays, one or more images each.
        recipe: the calibration recipe (its method).
        cache_path: where onnxruntime's JSON range cache is written.

    Returns:
        The cache, the method and the image count, for `quantize_qdq(ranges=...)`.

    Raises:
        EdgetlError: no calibration images.
    """
    import onnx
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if not len(calibration):
        raise EdgetlError("no calibration images: pass calibration data with images of the deployment classes")
    method, calib_options = ort_calibration(recipe)
    input_name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name
    arrays = np.concatenate([np.asarray(a, np.float32).reshape(-1, *np.shape(a)[-3:]) for a in calibration])
    chatter = io.StringIO()
    with quiet_root_logger(), tempfile.TemporaryDirectory(prefix="edgetl-qdq-") as tmp, \
            contextlib.redirect_stdout(chatter):
        calibrator = create_calibrator(_prepared(fp32_onnx, Path(tmp)), TENSORRT_QDQ_OPS,
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method, extra_options=calib_options)
        for start in range(0, len(arrays), CALIBRATION_CHUNK):
            calibrator.collect_data(ArrayCalibrationReader(arrays[start:start + CALIBRATION_CHUNK], input_name))
        data = calibrator.compute_data()
        del calibrator
        save_tensors_data(data, cache_path)
    log.debug("onnxruntime calibration: %s", chatter.getvalue().strip())
    return QdqRanges(Path(cache_path), recipe.method, len(arrays))


def quantize_qdq(fp32_onnx: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray] | None,
                 recipe: CalibrationRecipe, *, float_weights: bool = False, float_nodes: Sequence[str] = (),
                 ranges: QdqRanges | None = None) -> QdqResult:
    """Write the INT8 QDQ ONNX of `fp32_onnx`, calibrated on preprocessed NCHW `calibration` arrays
    (made by `edgetl.core.preprocess.Preprocess`, as on the device).

    Args:
        fp32_onnx: the FP32 ONNX from `export_onnx`.
        out_path: where the QDQ ONNX is written.
        calibration: preprocessed NCHW float32 arrays, one or more images each (unused with `ranges`).
        recipe: the calibration recipe (method, per-channel weights).
        float_weights: keep each weight float behind a QuantizeLinear/DequantizeLinear pair
            (the form shipped before int8 initializers; as large as FP32). Only for
            benchmarks/bench_qdq.py's comparison: `validate` refuses it for a bundle.
        float_nodes: node names of `fp32_onnx` to leave unquantized (onnxruntime's
            `nodes_to_exclude`): their inputs get no Q/DQ pair and their weights stay float32.
            Listed in the file's metadata (FLOAT_NODES_KEY) for `validate`.
        ranges: activation ranges from `calibrate_qdq` on this `fp32_onnx` and recipe method,
            used instead of calibrating again.

    Returns:
        The written path, the calibration ranges per tensor, the method, the image count and
        the float nodes.

    Raises:
        EdgetlError: no calibration images, a float node the graph lacks, ranges of another
            method, or the result fails onnx.checker.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    method, _ = ort_calibration(recipe)
    if ranges is not None and ranges.method != recipe.method:
        raise EdgetlError(f"ranges '{ranges.cache}' were calibrated with {ranges.method}, but recipe "
                          f"'{recipe.name}' uses {recipe.method}; calibrate again with the recipe")
    out_path = Path(out_path)
    float_nodes = tuple(dict.fromkeys(float_nodes))
    chatter = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="edgetl-qdq-") as tmp:
        if ranges is None:
            ranges = calibrate_qdq(fp32_onnx, [] if calibration is None else calibration, recipe,
                                   Path(tmp) / "ranges.json")
        with quiet_root_logger(), contextlib.redirect_stdout(chatter):
            prepared = _prepared(fp32_onnx, Path(tmp))
            missing = set(float_nodes) - {n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node}
            if missing:
                raise EdgetlError(f"'{fp32_onnx}' has no node(s) {sorted(missing)[:3]} to keep float; "
                                  "name nodes of that graph")
            quantize_static(
                str(prepared), str(out_path), None,
                op_types_to_quantize=TENSORRT_QDQ_OPS,
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel_weights,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                nodes_to_exclude=list(float_nodes),
                extra_options={**TENSORRT_QDQ_OPTIONS, "AddQDQPairToWeight": float_weights},
                calibration_cache_path=str(ranges.cache),
            )
        data = load_tensors_data(ranges.cache)
    log.debug("onnxruntime quantize_static: %s", chatter.getvalue().strip())
    if float_nodes:
        model = onnx.load(str(out_path))
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            FLOAT_NODES_KEY: json.dumps(list(float_nodes))})
        onnx.save(model, str(out_path))
    table = {name: (float(np.asarray(td.range_value[0]).item()), float(np.asarray(td.range_value[1]).item()))
             for name, td in data.data.items()}
    try:
        onnx.checker.check_model(str(out_path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EdgetlError(f"quantized '{out_path}' fails onnx.checker ({str(exc).splitlines()[0]})") from None
    return QdqResult(out_path, table, recipe.method, ranges.samples, float_nodes)


def float_nodes_of(model) -> list[str]:
    """The nodes a QDQ ONNX (an onnx.ModelProto) keeps float on purpose (FLOAT_NODES_KEY), in order."""
    for prop in model.metadata_props:
        if prop.key == FLOAT_NODES_KEY:
            return list(json.loads(prop.value))
    return []


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


# -- the format: export, validate, precisions -------------------------------------------------

CALIBRATION_CACHE = "calibration.cache"  # written as <model>.calibration.cache beside <model>.onnx
# TensorRT runs INT8 only on GPUs with DP4A / tensor cores: compute capability 6.1 and up.
MIN_INT8_COMPUTE_CAPABILITY = (6, 1)


def precision_refusal(target, precision: str) -> str | None:
    """Why a TensorRT target cannot run `precision`, in the words of its hardware, or None."""
    if target.runtime != "tensorrt" or precision != "int8" or not target.compute_capability:
        return None
    cc = tuple(int(v) for v in str(target.compute_capability).split(".")[:2])
    if cc >= MIN_INT8_COMPUTE_CAPABILITY:
        return None
    fast = [p for p in ("fp16", "fp32") if p in target.precisions]
    return (f"target '{target.name}' has a {target.gpu_arch or 'pre-Pascal'} GPU (compute capability "
            f"{target.compute_capability}) with no INT8 support in TensorRT (INT8 needs compute capability "
            f"{'.'.join(map(str, MIN_INT8_COMPUTE_CAPABILITY))}+); use --precision {fast[0] if fast else 'fp16'}"
            f"{', the fastest precision on ' + (target.gpu_arch or 'this GPU') if fast and fast[0] == 'fp16' else ''}")


def _io(path: Path, layout: str) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def entry(value) -> dict:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        return {"name": value.name, "dtype": "float32", "shape": dims}

    return {"input": {**entry(graph.input[0]), "layout": layout}, "output": entry(graph.output[0])}


def _info(target) -> dict:
    return {"exporter": EXPORTER, "opset": target.onnx_opset, "tensorrt": target.tensorrt,
            "engine": "built on the device: edgetl-device build-engine BUNDLE"}


def export(request: ExportRequest, out_path: Path) -> Exported:
    target = request.target
    if target is None or target.onnx_opset is None or target.tensorrt is None:
        raise EdgetlError("TensorRT export needs a target with 'tensorrt' and 'onnx_opset' (see targets/jetson-*.yaml)")
    if request.layout != "NCHW":
        raise EdgetlError(f"target '{target.name}': TensorRT bundles take NCHW input; set layout: NCHW in {target.path}")
    info = _info(target)
    # A fused model (backbone + head, `--fused`) outputs logits; the backbone its embedding.
    output_name = LOGITS_NAME if hasattr(request.module, "head") else EMBEDDING_NAME
    base = request.base
    if request.precision == "fp32" or base is None:
        fp32_path = out_path if request.precision == "fp32" else out_path.with_name(f"{out_path.stem}.fp32.onnx")
        result = export_onnx(request.module, request.size, fp32_path, target.onnx_opset, output_name)
        info["max_abs_diff_vs_torch"] = result.max_abs_diff
        if request.precision == "fp32":
            return Exported(out_path, _io(out_path, request.layout), info)
        base = fp32_path
    if request.precision == "fp16":
        shutil.copyfile(base, out_path)
        info["fp16"] = ("FP32 ONNX; TensorRT's FP16 builder flag is applied on the device. Host metrics for "
                        "fp16 are those of the FP32 graph on onnxruntime")
        return Exported(out_path, _io(out_path, request.layout), info)
    if request.precision != "int8":
        raise EdgetlError(f"TensorRT bundles are fp32, fp16 or int8, not '{request.precision}'")
    exported = export_int8(base, out_path, request.recipe, target, request.layout, request.calibration())
    exported.info.update(info)  # with the FP32 export's check against torch when it was made here
    return exported


def export_int8(base: Path, out_path: Path, recipe: CalibrationRecipe, target, layout: str,
                calibration: Sequence[np.ndarray] | None = None, *, ranges: QdqRanges | None = None,
                float_nodes: Sequence[str] = ()) -> Exported:
    """The INT8 artifact of a TensorRT bundle from the FP32 ONNX `base`: the QDQ ONNX at
    `out_path`, with the FP32 ONNX and a TensorRT calibration cache beside it (implicit INT8).

    Args:
        base: the FP32 ONNX from `export_onnx`.
        out_path: where the QDQ ONNX is written.
        recipe: the calibration recipe.
        target: the Target (its TensorRT version names the cache header).
        layout: the input layout (NCHW).
        calibration: preprocessed calibration arrays (unused with `ranges`).
        ranges: activation ranges from `calibrate_qdq` (the recovery ladder's variants).
        float_nodes: nodes left unquantized (`quantize_qdq`).

    Returns:
        The Exported, its `info` naming the quantizer, the calibration and any float nodes.
    """
    result = quantize_qdq(base, out_path, calibration, recipe, float_nodes=float_nodes, ranges=ranges)
    cache = write_tensorrt_calibration_cache(result.ranges, out_path.with_name(f"{out_path.stem}.{CALIBRATION_CACHE}"),
                                             target.tensorrt)
    fp32 = out_path.with_name(f"{out_path.stem}.fp32.onnx")
    if Path(base).resolve() != fp32.resolve():
        shutil.copyfile(base, fp32)
    info = _info(target)
    info.update({
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ, QInt8 weights and activations)",
        "calibration_method": result.method, "calibration_images": result.samples,
        "qdq_options": TENSORRT_QDQ_OPTIONS,
        "implicit_int8": {"onnx": fp32.name, "calibration_cache": cache.name,
                          "note": f"for TensorRT 8.x implicit INT8: trtexec --int8 --calib={cache.name}"},
    })
    if result.float_nodes:
        info["float_nodes"] = list(result.float_nodes)
        # The cache holds a range for every tensor, so implicit INT8 would quantize these too;
        # only the QDQ ONNX (explicit precision, TensorRT's own INT8 path) keeps them float.
        info["implicit_int8"]["note"] += "; it quantizes every layer, float_nodes included: use the QDQ ONNX"
    return Exported(out_path, _io(out_path, layout), info, extra_files={cache.name: cache, fp32.name: fp32})


def qdq_structure(path: Path) -> dict:
    """How the Q/DQ pairs sit in a QDQ ONNX, per conv.

    Args:
        path: a QDQ ONNX file.

    Returns:
        Counts: `convs`; `convs_qdq_activation` (input 0 is a DequantizeLinear fed by a
        QuantizeLinear); `convs_int8_weight` (the weight is a DequantizeLinear reading an int8
        initializer: stored quantized); `convs_float_weight_qdq` (the weight is a float
        initializer behind a QuantizeLinear/DequantizeLinear pair: quantized at run time,
        stored float); `convs_float_bias` and `convs_with_bias`; `initializer_bytes` by
        dtype ("int8", "float32", ...); `ops`, the node count per op type; and for the nodes
        the file keeps float on purpose (FLOAT_NODES_KEY, recovery step c): `float_nodes`
        (their count), `convs_kept_float` (convs among them) and `convs_kept_float_plain`
        (those with a float32 weight initializer and no Q/DQ on their input).
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    kept = set(float_nodes_of(model))
    producer = {out: n for n in graph.node for out in n.output}
    inits = {i.name: i for i in graph.initializer}

    def qdq_fed(name: str) -> bool:
        dq = producer.get(name)
        return dq is not None and dq.op_type == "DequantizeLinear" and \
            getattr(producer.get(dq.input[0]), "op_type", None) == "QuantizeLinear"

    def int8_stored(name: str) -> bool:
        dq = producer.get(name)
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits \
            and inits[dq.input[0]].data_type == onnx.TensorProto.INT8

    def float_behind_qdq(name: str) -> bool:
        return qdq_fed(name) and producer[producer[name].input[0]].input[0] in inits

    def plain_float(conv) -> bool:
        weight = inits.get(conv.input[1])
        return not qdq_fed(conv.input[0]) and weight is not None and weight.data_type == onnx.TensorProto.FLOAT

    convs = [n for n in graph.node if n.op_type == "Conv"]
    sizes: Counter = Counter()
    for init in graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        sizes[str(array.dtype)] += array.nbytes
    return {
        "ops": dict(Counter(n.op_type for n in graph.node)),
        "convs": len(convs),
        "convs_qdq_activation": sum(qdq_fed(n.input[0]) for n in convs),
        "convs_int8_weight": sum(int8_stored(n.input[1]) for n in convs),
        "convs_float_weight_qdq": sum(float_behind_qdq(n.input[1]) for n in convs),
        "convs_float_bias": sum(len(n.input) > 2 and n.input[2] in inits
                                and inits[n.input[2]].data_type == onnx.TensorProto.FLOAT for n in convs),
        "convs_with_bias": sum(len(n.input) > 2 and bool(n.input[2]) for n in convs),
        "initializer_bytes": dict(sorted(sizes.items())),
        "float_nodes": len(kept),
        "convs_kept_float": sum(n.name in kept for n in convs),
        "convs_kept_float_plain": sum(n.name in kept and plain_float(n) for n in convs),
    }


def validate(path: Path, precision: str) -> dict:
    """Check the ONNX is what `precision` promises for TensorRT; return facts for the manifest."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EdgetlError(f"exported '{path}' fails onnx.checker ({str(exc).splitlines()[0]})") from None
    model = onnx.load(str(path), load_external_data=False)
    facts = {"size_bytes": path.stat().st_size, "onnx_checker": "passed",
             "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value"):
        raise EdgetlError(f"exported '{path}' has a fixed batch of {batch.dim_value}; TensorRT bundles need a dynamic batch")
    ops = Counter(n.op_type for n in model.graph.node)
    if precision == "int8":
        s = qdq_structure(path)
        problem = None
        listed = set(float_nodes_of(model))
        unknown = listed - {n.name for n in model.graph.node}
        quantized = s["convs"] - s["convs_kept_float"]  # every conv but those kept float on purpose
        if unknown:
            problem = f"lists float nodes it lacks ({FLOAT_NODES_KEY}: {sorted(unknown)[:3]})"
        elif s["convs_kept_float_plain"] != s["convs_kept_float"]:
            problem = (f"quantizes {s['convs_kept_float'] - s['convs_kept_float_plain']} of the "
                       f"{s['convs_kept_float']} convs its {FLOAT_NODES_KEY} lists as float")
        elif s["convs_qdq_activation"] != quantized or s["convs_int8_weight"] != quantized:
            problem = (f"has Q/DQ on {s['convs_qdq_activation']} conv inputs and int8-stored weights on "
                       f"{s['convs_int8_weight']} of {quantized} convs"
                       + (f" ({s['convs_kept_float']} more kept float)" if s["convs_kept_float"] else "")
                       + (f" ({s['convs_float_weight_qdq']} keep float weights behind a Q/DQ pair, which TensorRT "
                          "takes but ships the model at FP32 size; quantize with float_weights=False)"
                          if s["convs_float_weight_qdq"] else ""))
        elif s["convs_float_bias"] != s["convs_with_bias"]:
            problem = f"has quantized biases ({s['convs_with_bias'] - s['convs_float_bias']} convs)"
        if problem:
            raise EdgetlError(f"exported '{path}' is not a TensorRT-ready QDQ model: it {problem}")
        facts["qdq"] = s
    elif ops.get("QuantizeLinear") or ops.get("DequantizeLinear"):
        raise EdgetlError(f"exported '{path}' is {precision} but holds Q/DQ nodes")
    return facts
