"""TFLite (LiteRT) export with litert-torch: FP32 conversion, then FP16 / INT8 with
ai-edge-quantizer on the FP32 flatbuffer (see edgetl/quantize/tflite.py for why)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.export.formats import Exported, ExportRequest


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


def export_tflite(request: ExportRequest, out_path: Path) -> Exported:
    from edgetl.quantize import tflite as q

    out_path = Path(out_path)
    if request.precision == "int8":
        q.check_recipe(request.recipe)  # fail before the slow conversion, not after
    if request.base is not None and request.precision != "fp32":
        fp32_path = request.base
    else:
        fp32_path = out_path if request.precision == "fp32" else out_path.with_name(out_path.stem + ".fp32.tflite")
        convert_fp32(request.module, request.size, request.layout, fp32_path)
    info: dict = {"converter": "litert-torch"}
    if request.precision == "fp16":
        q.quantize_fp16(fp32_path, out_path)
        info["quantizer"] = "ai-edge-quantizer float casting (fp16 weights)"
    elif request.precision == "int8":
        io = describe_io(fp32_path, request.layout)
        calibration = request.calibration()
        n = q.quantize_int8(fp32_path, out_path, calibration, request.recipe, io["input"]["signature_input"],
                            io["input"]["signature"], request.threads)
        info["quantizer"] = "ai-edge-quantizer static_wi8_ai8 (full integer, int8 I/O)"
        info["calibration"] = {**request.recipe.to_dict(), "images": n}
    if fp32_path not in (out_path, request.base):
        fp32_path.unlink()
    return Exported(out_path, describe_io(out_path, request.layout), info)


def validate_tflite(path: Path, precision: str) -> dict:
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
