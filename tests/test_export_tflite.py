"""TFLite export on real weights and real images: FP32 matches torch, INT8 is full-integer
and evaluated by the device runtime, the accuracy gate stops a broken calibration, and
every FORMATS row converts MobileNetV3 (hard-swish, the classic INT8 trouble spot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DEMO, EDGETL, manifest_json, run_cli, val_images
from edgetl.runtime.predictor import Predictor


def test_fp32_tflite_logits_match_torch(trained_run, fp32_bundle):
    import torch

    from edgetl.model import load_run

    run = load_run(trained_run)
    paths, _ = val_images(trained_run, 16)
    assert len(paths) == 16
    predictor = Predictor.open(fp32_bundle)
    tflite_logits = predictor.logits(predictor.embed(paths))
    with torch.no_grad():
        torch_logits = run.model(torch.from_numpy(run.preprocess.batch(paths))).numpy()
    assert np.abs(tflite_logits - torch_logits).max() < 1e-3
    assert (tflite_logits.argmax(1) == torch_logits.argmax(1)).all()


def test_device_preprocessing_equals_training_eval_transform(trained_run, fp32_bundle):
    """The bundle's NHWC preprocessing reproduces timm's eval transform (torchvision on PIL)
    for the run's backbone, image by image, on real photos of several sizes."""
    import timm.data

    from edgetl.model import load_run

    run = load_run(trained_run)
    manifest = manifest_json(fp32_bundle)
    cfg = timm.data.resolve_data_config({}, model=run.backbone)
    assert manifest["preprocess"]["size"] == cfg["input_size"][1]
    assert manifest["preprocess"]["interpolation"] == cfg["interpolation"]
    transform = timm.data.create_transform(**cfg)
    predictor = Predictor.open(fp32_bundle, verify=False)
    hymenoptera = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data" / "val"
    paths = sorted(DEMO.glob("*/*"))[:3] + (sorted(hymenoptera.glob("*/*.jpg"))[:5] if hymenoptera.is_dir() else [])
    from edgetl.data import ImageDataset

    training_eval = ImageDataset([(p, 0) for p in paths], run.preprocess)  # what finetune validates with
    for i, path in enumerate(paths):
        device = predictor.preprocess.batch([path])[0]
        assert device.shape == (cfg["input_size"][1], cfg["input_size"][2], 3)  # NHWC on the device
        assert np.array_equal(device, training_eval[i][0].permute(1, 2, 0).numpy()), path
        reference = transform(Image.open(path).convert("RGB")).permute(1, 2, 0).numpy()
        assert np.abs(device - reference).max() < 1e-5, path


def test_int8_bundle_is_full_integer_and_evaluated(int8_bundle, trained_run):
    m = manifest_json(int8_bundle)
    assert m["precision"] == "int8" and m["backend"] == "tflite" and m["target"]["name"] == "rpi5"
    assert set(m["files"]) == {"backbone.tflite", "head.npz", "labels.txt", "reference.npz", "model.tflite"}
    assert m["model"]["input"]["dtype"] == "int8" and m["model"]["output"]["dtype"] == "int8"
    assert m["model"]["input"]["layout"] == "NHWC" and m["model"]["input"]["shape"] == [1, 224, 224, 3]
    dtypes = m["export"]["validation"]["tensor_dtypes"]
    assert "float32" not in dtypes and dtypes["int8"] > 50  # every activation and weight is int8
    metrics = m["metrics"]
    _, y = val_images(trained_run)
    assert metrics["fp32"]["n"] == metrics["int8"]["n"] == metrics["val"]["n"] == len(y)
    for key in ("top1", "balanced_accuracy", "per_class", "confusion"):
        assert key in metrics["fp32"] and key in metrics["int8"]
    assert metrics["fp32"]["top1"] >= 0.8  # real Lite0 weights on the demo digits
    gate = metrics["gate"]
    correct = {p: sum(row[i] for i, row in enumerate(metrics[p]["confusion"])) for p in ("fp32", "int8")}
    assert gate["drop_pts"] == pytest.approx((correct["fp32"] - correct["int8"]) * 100 / len(y))
    assert metrics["int8"]["top1"] >= 0.8 and gate["tolerance_pts"] == 1.0  # targets/rpi5.yaml
    assert metrics["size_bytes"]["int8"] <= metrics["size_bytes"]["fp32"] / 3
    assert m["calibration"]["method"] == "minmax" and m["calibration"]["images"] == 64
    assert m["calibration"]["source"] == "run training split"
    assert m["versions"]["converter"]["litert-torch"] and m["versions"]["runtime"]["ai-edge-litert"]
    # the fused single-file model agrees with backbone + head
    assert m["fused"]["output"]["shape"] == [1, len(m["labels"])]
    assert abs(m["fused"]["top1"] - metrics["int8"]["top1"]) <= 0.05
    # reference embeddings come from the quantized backbone, with labels, for the guardrail
    with np.load(int8_bundle / "reference.npz", allow_pickle=False) as ref:
        assert ref["embeddings"].shape == (m["reference"]["n"], m["model"]["embedding_dim"])
        assert ref["embeddings"].dtype == np.float32 and ref["labels"].shape == (m["reference"]["n"],)
        predictor = Predictor.open(int8_bundle, verify=False)
        paths, y_val = val_images(trained_run)
        emb = predictor.embed(paths)
        # every reference row is the exported model's embedding of a validation image
        dists = ((ref["embeddings"][:, None, :] - emb[None, :, :]) ** 2).sum(-1)
        nearest = dists.argmin(1)
        assert np.allclose(dists.min(1), 0.0, atol=1e-6)
        assert (np.asarray(y_val)[nearest] == ref["labels"]).all()


def test_accuracy_gate_rejects_broken_calibration(trained_run, tmp_path):
    """Calibrating on one flat grey image squeezes every activation range; the gate must see
    the collapse on the validation set, still write the report, and exit non-zero."""
    calib = tmp_path / "calib" / "grey"
    calib.mkdir(parents=True)
    Image.new("RGB", (100, 100), (128, 128, 128)).save(calib / "grey.png")
    out = tmp_path / "gated"
    proc = run_cli(EDGETL, "export", trained_run, "--target", "generic-arm64", "--precision", "int8",
                   "--calib", calib.parent, "--recover", "off", "--out", out)
    assert proc.returncode == 1
    assert "points below FP32" in proc.stderr and "accuracy_tolerance_pts" in proc.stderr
    assert "generic-arm64.yaml" in proc.stderr and "--allow-accuracy-drop" in proc.stderr
    m = manifest_json(out)
    assert m["metrics"]["gate"]["passed"] is False and m["metrics"]["gate"]["drop_pts"] > 1.0
    assert m["calibration"]["images"] == 1 and m["calibration"]["source"] == "calibration folder given at export"


def test_export_refuses_bad_options(trained_run, tmp_path):
    from edgetl.errors import EdgetlError
    import edgetl

    proc = run_cli(EDGETL, "export", trained_run, "--target", "rpi5", "--calib-recipe", "entropy", "--out",
                   tmp_path / "x")
    assert proc.returncode == 1 and "entropy" in proc.stderr and "minmax" in proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()
    with pytest.raises(EdgetlError, match="unknown target 'no-such-board'"):
        edgetl.export(trained_run, "no-such-board", tmp_path / "y")
    board = tmp_path / "fp32only.yaml"
    board.write_text((Path(__file__).resolve().parents[1] / "targets" / "rpi5.yaml").read_text()
                     .replace("name: rpi5", "name: fp32only").replace("[int8, fp16, fp32]", "[fp32]")
                     .replace("default_precision: int8", "default_precision: fp32"))
    with pytest.raises(EdgetlError, match="not 'int8'") as err:
        edgetl.export(trained_run, str(board), tmp_path / "z", precision="int8")
    assert str(board) in str(err.value)


def _format_matrix():
    from edgetl.formats import FORMATS

    return [(name, precision) for name, fmt in FORMATS.items() for precision in fmt.precisions]


@pytest.fixture(scope="module")
def mobilenetv3(tmp_path_factory):
    """A random-init mobilenetv3_large_100 (`--weights none`) and real calibration images."""
    from edgetl.backbones import create_backbone, get_spec

    backbone, _ = create_backbone("mobilenetv3_large_100", weights="none")
    spec = get_spec("mobilenetv3_large_100")
    return backbone.eval(), spec, tmp_path_factory.mktemp("mnv3"), {}


@pytest.mark.parametrize("fmt_name, precision", _format_matrix())
def test_format_matrix_mobilenetv3(mobilenetv3, fmt_name, precision):
    import torch

    from edgetl.formats import FORMATS, ExportRequest
    from edgetl.quantize.recipes import load_recipe
    from edgetl.backends import open_backend
    from edgetl.targets import list_targets

    backbone, spec, work, cache = mobilenetv3
    fmt = FORMATS[fmt_name]
    layout = "NHWC" if fmt.backend == "tflite" else "NCHW"
    preprocess = spec.preprocess(layout)
    images = sorted(DEMO.glob("*/*"))[::10][:16]

    target = next(t for t in list_targets() if t.runtime == fmt.runtime)

    def request(prec: str) -> ExportRequest:
        return ExportRequest(module=backbone, size=spec.size, layout=layout, precision=prec,
                             recipe=load_recipe("minmax"), calibration=lambda: [preprocess.batch([p]) for p in images],
                             base=cache.get((fmt_name, "fp32")), target=target)

    if (fmt_name, "fp32") not in cache:  # one FP32 conversion per format; quantizers start from it
        cache[(fmt_name, "fp32")] = fmt.export(request("fp32"), work / f"{fmt_name}-fp32{fmt.suffix}").path
    path = cache[(fmt_name, "fp32")] if precision == "fp32" else \
        fmt.export(request(precision), work / f"{fmt_name}-{precision}{fmt.suffix}").path
    facts = fmt.validate(path, precision)
    assert facts["size_bytes"] > 0
    io = {"input": {"shape": [1, spec.size, spec.size, 3] if layout == "NHWC" else [1, 3, spec.size, spec.size]}}
    backend = open_backend(fmt.host_backend or fmt.backend, path, io, threads=2)
    batch = preprocess.batch(images[:4])
    emb = backend.run(batch)
    assert emb.shape == (4, spec.embedding_dim) and emb.dtype == np.float32 and np.isfinite(emb).all()
    with torch.no_grad():
        nchw = batch if layout == "NCHW" else batch.transpose(0, 3, 1, 2)
        ref = backbone(torch.from_numpy(np.ascontiguousarray(nchw))).numpy()
    err = np.abs(emb - ref).max() / (np.abs(ref).max() + 1e-6)
    # FP32 is exact; FP16 weights and INT8 stay near the float embedding even on random init
    assert err < {"fp32": 1e-4, "fp16": 0.02, "int8": 0.5}[precision], err
