"""INT8 QDQ ONNX for TensorRT from onnxruntime's quantize_static, inspected node by node,
and the TensorRT calibration cache written from the same calibration ranges."""

from __future__ import annotations

import struct

import numpy as np
import onnx
import pytest

from edgetl.errors import EdgetlError
from edgetl.formats.onnx_tensorrt import run_onnx
from edgetl.formats.onnx_tensorrt import qdq_structure, validate
from edgetl.formats.onnx_tensorrt import (ort_calibration, read_tensorrt_calibration_cache, tensorrt_version_number,
                                      write_tensorrt_calibration_cache)
from edgetl.quantize.recipes import load_recipe
from tests.jetson_fixtures import demo_images



def test_every_conv_activation_has_a_qdq_pair_and_every_weight_is_stored_int8(qdq):
    model = onnx.load(str(qdq.path))
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 49
    for conv in convs:
        for role, name in (("activation", conv.input[0]), ("weight", conv.input[1])):
            dq = producer.get(name)
            assert dq is not None and dq.op_type == "DequantizeLinear", (conv.name, role)
            # Symmetric int8: zero points are int8 zeros (TensorRT supports no other).
            zp = onnx.numpy_helper.to_array(inits[dq.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), (conv.name, role)
            if role == "activation":
                q = producer.get(dq.input[0])
                assert q is not None and q.op_type == "QuantizeLinear", conv.name
            else:
                # int8 weight initializer -> DQ, no QuantizeLinear: stored quantized, as TensorRT
                # and onnxruntime both take it.
                assert dq.input[0] in inits and dq.input[0] not in producer, conv.name
                weight = onnx.numpy_helper.to_array(inits[dq.input[0]])
                assert weight.dtype == np.int8 and weight.ndim == 4 and np.abs(weight).max() <= 127, conv.name
                scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
                assert scale.dtype == np.float32 and scale.shape == (weight.shape[0],)  # per output channel
                assert int(next(a.i for a in dq.attribute if a.name == "axis")) == 0, conv.name
        # Bias stays a float initializer, fed straight into the conv.
        if len(conv.input) > 2 and conv.input[2]:
            assert conv.input[2] in inits and conv.input[2] not in producer
            assert inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT
    # Residual adds are quantized on their inputs too (TensorRT fuses int8 residuals).
    for add in (n for n in graph.node if n.op_type == "Add"):
        assert all(producer[i].op_type == "DequantizeLinear" for i in add.input)
    assert not any(i.data_type == onnx.TensorProto.INT32 for i in graph.initializer)  # no int32 biases
    # No float copy of a conv weight is left: every float initializer is a bias or a scale.
    floats = sum(onnx.numpy_helper.to_array(i).nbytes for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    int8 = sum(onnx.numpy_helper.to_array(i).nbytes for i in graph.initializer if i.data_type == onnx.TensorProto.INT8)
    assert floats < 0.1 * int8, (floats, int8)
    s = qdq_structure(qdq.path)
    assert s["convs"] == s["convs_qdq_activation"] == s["convs_int8_weight"] == 49 and s["convs_float_weight_qdq"] == 0
    assert s["initializer_bytes"]["int8"] == int8
    assert validate(qdq.path, "int8")["qdq"] == s


def test_int8_weights_make_the_qdq_file_under_0_3_of_fp32(qdq, fp32_onnx):
    """Stored as int8 (not float behind a Q/DQ pair, which made it 13.6 MB against FP32's 13.4 MB)."""
    assert qdq.path.stat().st_size <= 0.3 * fp32_onnx.path.stat().st_size


def test_float_weight_qdq_form_is_refused_for_a_bundle(fp32_onnx, lite0, tmp_path):
    """The old form (float weight -> Q -> DQ) still quantizes for comparison, but validate names it."""
    import dataclasses

    from edgetl.formats.onnx_tensorrt import quantize_qdq

    _, pre = lite0
    recipe = dataclasses.replace(load_recipe("minmax"), samples=4)
    old = quantize_qdq(fp32_onnx.path, tmp_path / "old.onnx", [pre.batch(demo_images(1)[:4])], recipe,
                       float_weights=True)
    s = qdq_structure(old.path)
    assert s["convs_float_weight_qdq"] == 49 and s["convs_int8_weight"] == 0
    assert old.path.stat().st_size > fp32_onnx.path.stat().st_size
    with pytest.raises(EdgetlError, match="49 keep float weights behind a Q/DQ pair"):
        validate(old.path, "int8")


def test_onnxruntime_runs_the_qdq_model_close_to_fp32(qdq, fp32_onnx, lite0):
    _, pre = lite0
    x = pre.batch(demo_images(1, offset=20))  # not calibration images
    a, b = run_onnx(fp32_onnx.path, x), run_onnx(qdq.path, x)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert b.shape == (10, 1280) and cos.min() > 0.95, cos


def test_fp32_validator_refuses_qdq_and_int8_validator_refuses_fp32(qdq, fp32_onnx):
    with pytest.raises(EdgetlError, match="Q/DQ"):
        validate(qdq.path, "fp32")
    with pytest.raises(EdgetlError, match="TensorRT-ready"):
        validate(fp32_onnx.path, "int8")


def test_tensorrt_calibration_cache_format(qdq, fp32_onnx, tmp_path):
    path = write_tensorrt_calibration_cache(qdq.ranges, tmp_path / "calibration.cache", "8.5.2")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8502-EntropyCalibration2"
    for line in lines[1:]:
        name, sep, hexval = line.rpartition(": ")
        assert sep and len(hexval) == 8 and int(hexval, 16) >= 0
    header, scales = read_tensorrt_calibration_cache(path)
    assert header == lines[0] and set(scales) == set(qdq.ranges)
    # Every cached tensor is a tensor of the FP32 ONNX (implicit INT8 reads it with that graph).
    graph = onnx.load(str(fp32_onnx.path)).graph
    tensors = {graph.input[0].name} | {o for n in graph.node for o in n.output}
    assert set(scales) <= tensors and "input" in scales
    lo, hi = qdq.ranges["input"]
    expected = struct.unpack(">f", struct.pack(">f", max(abs(lo), abs(hi)) / 127.0))[0]
    assert scales["input"] == expected
    # ReLU6 outputs: amax 6 at most.
    clip = [s for n, s in scales.items() if n.endswith("Clip_output_0")]
    assert clip and max(clip) <= 6.0 / 127.0 + 1e-7


def test_tensorrt_version_numbers():
    assert tensorrt_version_number("8.5.2") == 8502
    assert tensorrt_version_number("10.3.0") == 10300
    assert tensorrt_version_number("8.2.1.8") == 8201


def test_recipe_methods_map_to_onnxruntime():
    from onnxruntime.quantization import CalibrationMethod

    assert ort_calibration(load_recipe("entropy"))[0] == CalibrationMethod.Entropy
    method, extra = ort_calibration(load_recipe("percentile"))
    assert method == CalibrationMethod.Percentile and extra["percentile"] == 99.99 and extra["symmetric"]
    method, extra = ort_calibration(load_recipe("moving-average"))
    assert method == CalibrationMethod.MinMax and extra["moving_average"] is True and extra["symmetric"]
    with pytest.raises(EdgetlError, match="histogram"):
        ort_calibration(load_recipe("histogram"))


def test_histogram_calibration_over_several_chunks(fp32_onnx, lite0, tmp_path):
    """Entropy calibration on 35 images: two chunks of unequal size (32 + 3) merge into one
    histogram per tensor, and the result is a valid TensorRT-ready QDQ model."""
    import dataclasses

    from edgetl.formats.onnx_tensorrt import CALIBRATION_CHUNK, quantize_qdq

    _, pre = lite0
    images = demo_images(4)[:35]
    assert len(images) == 35 and len(images) % CALIBRATION_CHUNK
    recipe = dataclasses.replace(load_recipe("entropy"), samples=35)
    result = quantize_qdq(fp32_onnx.path, tmp_path / "entropy.onnx", [pre.batch([p]) for p in images], recipe)
    assert result.samples == 35 and result.method == "entropy"
    assert validate(result.path, "int8")["qdq"]["convs_qdq_activation"] == 49
    lo, hi = result.ranges["input"]
    assert lo == -hi and 0 < hi <= 1.0 + 1e-6  # symmetric; the input is normalised to [-1, 1]
