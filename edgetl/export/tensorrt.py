"""Host half of the TensorRT (Jetson) format: what goes into the bundle before the device
builds its engine.

fp32: the ONNX backbone. fp16: the same FP32 ONNX; FP16 is a TensorRT builder flag applied on
the device, so the host can only score the FP32 graph. int8: an explicit-quantization QDQ
ONNX (edgetl/quantize/onnx_qdq.py), scored on the host with onnxruntime as the INT8 proxy,
plus the FP32 ONNX and a TensorRT calibration cache for implicit INT8 on TensorRT 8.x.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.export.formats import Exported, ExportRequest
from edgetl.export.onnx import EMBEDDING_NAME, EXPORTER, LOGITS_NAME, export_onnx

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


def export_tensorrt(request: ExportRequest, out_path: Path) -> Exported:
    target = request.target
    if target is None or target.onnx_opset is None or target.tensorrt is None:
        raise EdgetlError("TensorRT export needs a target with 'tensorrt' and 'onnx_opset' (see targets/jetson-*.yaml)")
    if request.layout != "NCHW":
        raise EdgetlError(f"target '{target.name}': TensorRT bundles take NCHW input; set layout: NCHW in {target.path}")
    info = {"exporter": EXPORTER, "opset": target.onnx_opset, "tensorrt": target.tensorrt,
            "engine": "built on the device: edgetl-device build-engine BUNDLE"}
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
    from edgetl.quantize.onnx_qdq import (TENSORRT_QDQ_OPTIONS, quantize_qdq,
                                          write_tensorrt_calibration_cache)

    result = quantize_qdq(base, out_path, request.calibration(), request.recipe)
    cache = write_tensorrt_calibration_cache(result.ranges, out_path.with_name(f"{out_path.stem}.{CALIBRATION_CACHE}"),
                                             target.tensorrt)
    fp32 = out_path.with_name(f"{out_path.stem}.fp32.onnx")
    if Path(base).resolve() != fp32.resolve():
        shutil.copyfile(base, fp32)
    info.update({
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ, QInt8 weights and activations)",
        "calibration_method": result.method, "calibration_images": result.samples,
        "qdq_options": TENSORRT_QDQ_OPTIONS,
        "implicit_int8": {"onnx": fp32.name, "calibration_cache": cache.name,
                          "note": f"for TensorRT 8.x implicit INT8: trtexec --int8 --calib={cache.name}"},
    })
    return Exported(out_path, _io(out_path, request.layout), info, extra_files={cache.name: cache, fp32.name: fp32})


def qdq_structure(path: Path) -> dict:
    """How the Q/DQ pairs sit in a QDQ ONNX: per conv, is every activation and weight input
    a DequantizeLinear fed by a QuantizeLinear, and is the bias a float initializer."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: n for n in graph.node for out in n.output}
    inits = {i.name: i for i in graph.initializer}

    def qdq_fed(name: str) -> bool:
        dq = producer.get(name)
        return dq is not None and dq.op_type == "DequantizeLinear" and \
            getattr(producer.get(dq.input[0]), "op_type", None) == "QuantizeLinear"

    convs = [n for n in graph.node if n.op_type == "Conv"]
    return {
        "ops": dict(Counter(n.op_type for n in graph.node)),
        "convs": len(convs),
        "convs_qdq_activation": sum(qdq_fed(n.input[0]) for n in convs),
        "convs_qdq_weight": sum(qdq_fed(n.input[1]) for n in convs),
        "convs_float_bias": sum(len(n.input) > 2 and n.input[2] in inits
                                and inits[n.input[2]].data_type == onnx.TensorProto.FLOAT for n in convs),
        "convs_with_bias": sum(len(n.input) > 2 and bool(n.input[2]) for n in convs),
    }


def validate_tensorrt(path: Path, precision: str) -> dict:
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
        if s["convs_qdq_activation"] != s["convs"] or s["convs_qdq_weight"] != s["convs"]:
            problem = (f"has Q/DQ on {s['convs_qdq_activation']} conv inputs and {s['convs_qdq_weight']} conv weights "
                       f"of {s['convs']} convs")
        elif s["convs_float_bias"] != s["convs_with_bias"]:
            problem = f"has quantized biases ({s['convs_with_bias'] - s['convs_float_bias']} convs)"
        if problem:
            raise EdgetlError(f"exported '{path}' is not a TensorRT-ready QDQ model: it {problem}")
        facts["qdq"] = s
    elif ops.get("QuantizeLinear") or ops.get("DequantizeLinear"):
        raise EdgetlError(f"exported '{path}' is {precision} but holds Q/DQ nodes")
    return facts
