"""ONNX export of a run for TensorRT: the backbone (image -> embedding) with a dynamic batch.

Uses the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) because it writes any
opset TensorRT needs (13 for TensorRT 8.2 up to 20); the dynamo exporter starts at opset 18
and onnx's version converter cannot bring its graphs down to 17. The exported graph is then
cleaned with onnxruntime's basic (EP-independent) constant folding and onnxscript's
Pad-into-Conv fusion, leaving the plain Conv/Clip/Add graph TensorRT's parser and
onnxruntime's QDQ quantizer handle best.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError

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
