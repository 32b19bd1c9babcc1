"""ONNX export of the real EfficientNet-Lite0 backbone for TensorRT: checker, dynamic batch,
opset per target, TF-SAME pads folded into the convs, onnxruntime equal to torch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from edgetl.formats.onnx_tensorrt import export_onnx, run_onnx
from edgetl.targets import load_target
from tests.jetson_fixtures import demo_images



def test_fp32_onnx_is_checked_dynamic_and_equal_to_torch(fp32_onnx, lite0):
    backbone, pre = lite0
    model = onnx.load(str(fp32_onnx.path))
    onnx.checker.check_model(model, full_check=True)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    ops = Counter(n.op_type for n in model.graph.node)
    # timm's dynamic SAME padding (Shape/Gather/Ceil/Pad) is gone: pads live in the convs.
    assert not {"Pad", "Shape", "Gather", "Ceil"} & set(ops), ops
    assert ops["Conv"] == 49
    assert any(list(a.ints) == [0, 0, 1, 1] for n in model.graph.node if n.op_type == "Conv"
               for a in n.attribute if a.name == "pads")
    # A batch size the export never saw (5) on real images.
    x = pre.batch(demo_images(1)[:5])
    with torch.no_grad():
        expected = backbone(torch.from_numpy(x)).numpy()
    got = run_onnx(fp32_onnx.path, x)
    assert got.shape == (5, 1280)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("target", ["jetson-nano", "jetson-orin-nano"])
def test_opset_follows_target_tensorrt(target, lite0, tmp_path):
    backbone, pre = lite0
    t = load_target(target)
    result = export_onnx(backbone, pre.size, tmp_path / "m.onnx", t.onnx_opset)
    model = onnx.load(str(result.path))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", t.onnx_opset)]
    assert result.max_abs_diff < 1e-4
    # TensorRT 8.2's parser reads opsets up to 13, 10.3's up to 20.
    assert t.onnx_opset == {"8.2.1": 13, "10.3.0": 19}[t.tensorrt]
