"""The device runtime on real bundles: every input kind gives the same answer, predictions
carry top-k and timing, evaluation reproduces the export's metrics, both CLIs work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from edgetl.bundle import BundleWriter, Manifest
from tests.conftest import DEMO, DEVICE, EDGETL, manifest_json, run_cli, val_folder
from edgetl.errors import EdgetlError
from edgetl.runtime.predictor import Predictor

IMAGES = sorted(DEMO.glob("*/*"))[::24][:6]  # one image from each of six classes


@pytest.fixture(scope="module")
def predictor(int8_bundle) -> Predictor:
    return Predictor.open(int8_bundle)


def test_input_kinds_agree(predictor):
    from_paths = predictor.embed(IMAGES)
    assert from_paths.shape == (len(IMAGES), 1280) and from_paths.dtype == np.float32
    pil = [Image.open(p) for p in IMAGES]
    uint8 = [np.asarray(Image.open(p).convert("RGB")) for p in IMAGES]
    pre = predictor.preprocess.batch(IMAGES)
    assert np.array_equal(predictor.embed(pil), from_paths)
    assert np.array_equal(predictor.embed(uint8), from_paths)
    assert np.array_equal(predictor.embed(pre), from_paths)  # a preprocessed NHWC batch
    assert np.array_equal(predictor.embed(list(pre)), from_paths)  # preprocessed single images
    assert np.array_equal(predictor.embed(IMAGES[0]), from_paths[:1])  # one image, not a list
    assert np.array_equal(predictor.embed(IMAGES, batch_size=4), from_paths)


def test_predict_has_labels_topk_and_timing(predictor, int8_bundle):
    preds = predictor.predict(IMAGES, top_k=3)
    assert len(preds) == len(IMAGES)
    labels = manifest_json(int8_bundle)["labels"]
    assert predictor.labels == labels
    for p, path in zip(preds, IMAGES):
        assert p.label == labels[p.index] and p.source == str(path)
        assert [lab for lab, _ in p.top_k][0] == p.label and len(p.top_k) == 3
        scores = [s for _, s in p.top_k]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
        assert p.score == scores[0]
        assert p.timing_ms["inference"] > 0 and p.timing_ms["preprocess"] > 0
        json.dumps(p.to_dict())
    correct = sum(p.label == path.parent.name for p, path in zip(preds, IMAGES))
    assert correct >= 4  # real weights: the demo digits are mostly right


def test_threads_default_to_target(int8_bundle):
    manifest = manifest_json(int8_bundle)
    assert Predictor.open(int8_bundle, verify=False).backend.threads == manifest["target"]["threads"]
    assert Predictor.open(int8_bundle, threads=1, verify=False).backend.threads == 1


def test_evaluate_reproduces_export_metrics(int8_bundle, trained_run, tmp_path):
    data = val_folder(trained_run, tmp_path / "val")
    out = tmp_path / "metrics.json"
    proc = run_cli(DEVICE, "evaluate", int8_bundle, data, "--out", out)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    exported = manifest_json(int8_bundle)["metrics"]["int8"]
    assert metrics["n"] == exported["n"] and metrics["top1"] == exported["top1"]
    assert metrics["confusion"] == exported["confusion"]
    recalls = [row[i] / sum(row) for i, row in enumerate(metrics["confusion"]) if sum(row)]
    assert metrics["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    assert list(metrics["per_class"]) == metrics["labels"] == [str(i) for i in range(10)]
    host = run_cli(EDGETL, "evaluate", int8_bundle, data, "--json")
    assert host.returncode == 0, host.stderr
    assert json.loads(host.stdout)["top1"] == metrics["top1"]


def test_evaluate_refuses_unknown_classes(int8_bundle, tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "data" / "cats" / "a.png")
    proc = run_cli(DEVICE, "evaluate", int8_bundle, tmp_path / "data")
    assert proc.returncode == 1 and "cats" in proc.stderr and "does not know" in proc.stderr


def test_device_predict_cli_json_and_table(int8_bundle, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    proc = run_cli(DEVICE, "predict", int8_bundle, *IMAGES[:2], "--json", "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [p["source"] for p in out["predictions"]] == [str(p) for p in IMAGES[:2]]
    assert len(out["predictions"][0]["top_k"]) == 2 and out["errors"] == []
    table = run_cli(DEVICE, "predict", int8_bundle, IMAGES[0], bad, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 1  # one image could not be read: reported, the other still predicted
    assert IMAGES[0].parent.name in table.stdout and "broken.jpg" in table.stderr


def test_onnxruntime_backend_with_dynamic_batch(tmp_path):
    """The onnxruntime backend on a real ONNX file: batch of any size, float I/O."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["emb"], keepdims=0)],
        "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "pool.onnx")
    np.savez(tmp_path / "head.npz", weight=np.eye(2, 3, dtype=np.float32), bias=np.zeros(2, np.float32))
    (tmp_path / "labels.txt").write_text("r\ng\n")
    manifest = Manifest(target={"name": "x86", "threads": 1}, precision="fp32", backend="onnxruntime",
                        preprocess={"size": 8, "resize": 8, "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "NCHW"},
                        labels=("r", "g"), metrics={}, versions={}, head="head.npz",
                        model={"file": "pool.onnx", "embedding_dim": 3,
                               "input": {"name": "x", "dtype": "float32", "shape": [-1, 3, 8, 8], "layout": "NCHW"}})
    bundle = tmp_path / "b"
    with BundleWriter(bundle) as w:
        for n in ("pool.onnx", "head.npz", "labels.txt"):
            w.add_file(n, tmp_path / n)
        w.commit(manifest)
    predictor = Predictor.open(bundle)
    red, green = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    red[..., 0], green[..., 1] = 255, 255
    emb = predictor.embed([red, green, red])
    assert np.allclose(emb, [[1, 0, 0], [0, 1, 0], [1, 0, 0]], atol=1e-6)
    assert [p.label for p in predictor.predict([red, green])] == ["r", "g"]


def test_unknown_backend_is_refused(int8_bundle, tmp_path):
    from edgetl.backends import open_backend

    with pytest.raises(EdgetlError, match="backend 'coreml' is not one of"):
        open_backend("coreml", int8_bundle / "backbone.tflite", {}, 1)
