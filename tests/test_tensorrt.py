"""The on-device TensorRT half. Everything decided in Python (API per TensorRT version,
cache key, refusal of a foreign engine, trtexec fallback, the CLI without TensorRT) is
tested here for real; building and running an engine needs TensorRT and a GPU, and those
tests skip with the reason when `tensorrt` is not importable."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import manifest_json
from edgetl.errors import EdgetlError
from edgetl.backends.engine import (EngineKey, check_engine, engine_key, engine_path, execute_api, plan_build,
                                   trtexec_command, write_engine)
from edgetl.bundle import Manifest
from edgetl.targets import load_target
from tests.conftest import DEVICE, EDGETL, run_cli
from tests.jetson_fixtures import demo_images


def manifest_for(target: str, precision: str) -> Manifest:
    return Manifest(target=load_target(target).to_dict(), precision=precision, backend="tensorrt",
                    model={"file": "backbone.onnx", "input": {"name": "input", "shape": [-1, 3, 224, 224]},
                           "output": {"name": "embedding", "shape": [-1, 1280]}, "embedding_dim": 1280},
                    preprocess={}, labels=("a", "b"), metrics={}, versions={})


def test_plan_tensorrt_8_2_jetson_nano_uses_legacy_apis():
    plan = plan_build(manifest_for("jetson-nano", "fp16"), "8.2.1")
    assert plan.explicit_batch_flag and not plan.strongly_typed
    assert plan.workspace_api == "max_workspace_size" and plan.workspace_mb == 512
    assert plan.execute_api == "v2" and plan.builder_flags == ("FP16",)
    assert (plan.min_batch, plan.opt_batch, plan.max_batch) == (1, 1, 8)


def test_plan_tensorrt_8_5_xavier_int8_explicit_quantization():
    plan = plan_build(manifest_for("jetson-xavier-nx", "int8"), "8.5.2")
    assert plan.explicit_batch_flag and plan.workspace_api == "memory_pool" and plan.execute_api == "v3"
    assert plan.builder_flags == ("INT8", "FP16")


def test_plan_tensorrt_10_drops_explicit_batch_flag():
    plan = plan_build(manifest_for("jetson-orin-nano", "fp32"), "10.3.0")
    assert not plan.explicit_batch_flag and not plan.strongly_typed and plan.builder_flags == ()
    assert plan.workspace_mb == 1024 and plan.shape(4) == (4, 3, 224, 224)


def test_plan_tensorrt_11_is_strongly_typed_and_refuses_fp16_flag():
    plan = plan_build(manifest_for("jetson-orin-nano", "int8"), "11.0.0")
    assert plan.strongly_typed and plan.builder_flags == ()  # precision comes from the Q/DQ graph
    with pytest.raises(EdgetlError, match="removed BuilderFlag.FP16"):
        plan_build(manifest_for("jetson-orin-nano", "fp16"), "11.0.0")


def test_plan_dla():
    plan = plan_build(manifest_for("jetson-agx-orin", "int8"), "10.3.0", dla_core=1, opt_batch=2)
    assert plan.dla_core == 1 and "GPU_FALLBACK" in plan.builder_flags
    assert plan.min_batch == plan.opt_batch == plan.max_batch == 2  # DLA: no dynamic shapes
    with pytest.raises(EdgetlError, match="0 DLA core"):
        plan_build(manifest_for("jetson-orin-nano", "int8"), "10.3.0", dla_core=0)
    with pytest.raises(EdgetlError, match="pass 0..1"):
        plan_build(manifest_for("jetson-agx-orin", "int8"), "10.3.0", dla_core=2)
    with pytest.raises(EdgetlError, match="DLA does not run fp32"):
        plan_build(manifest_for("jetson-agx-orin", "fp32"), "10.3.0", dla_core=0)


def test_execute_api_by_version():
    assert [execute_api(v) for v in ("8.2.1.8", "8.4.1", "8.5.2.2", "8.6.2", "10.3.0", "11.0")] == \
        ["v2", "v2", "v3", "v3", "v3", "v3"]


def test_trtexec_line_matches_the_plan(tmp_path):
    plan = plan_build(manifest_for("jetson-agx-orin", "int8"), "10.3.0", dla_core=0)
    args = shlex.split(trtexec_command(tmp_path, plan, tmp_path / "e.engine", "tc.cache"))
    assert args[0] == "trtexec" and f"--onnx={tmp_path / 'backbone.onnx'}" in args
    assert {"--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback", "--memPoolSize=workspace:4096",
            "--minShapes=input:1x3x224x224", "--maxShapes=input:1x3x224x224", "--timingCacheFile=tc.cache"} <= set(args)
    old = shlex.split(trtexec_command(tmp_path, plan_build(manifest_for("jetson-nano", "fp16"), "8.2.1"), "e"))
    assert "--workspace=512" in old and "--fp16" in old and "--maxShapes=input:8x3x224x224" in old
    new = shlex.split(trtexec_command(tmp_path, plan_build(manifest_for("jetson-orin-nano", "int8"), "11.0"), "e"))
    assert "--stronglyTyped" in new and "--int8" not in new


def test_engine_key_refuses_foreign_engines(orin_int8_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    import shutil
    shutil.copytree(orin_int8_bundle, bundle)
    key = engine_key(bundle, "Orin (nvgpu)", "8.7", "10.3.0")
    plan = plan_build(Manifest.read(bundle), "10.3.0")
    # The key file is what is checked; the engine bytes stay opaque to edgetl.
    path = write_engine(bundle, key, b"opaque engine bytes", plan)
    assert path == engine_path(bundle, key) and path.parent.name == "engines"
    assert check_engine(path, key)["plan"]["precision"] == "int8"
    for other in (replace(key, tensorrt="8.5.2"), replace(key, compute_capability="7.2"),
                  replace(key, gpu="NVIDIA H100")):
        with pytest.raises(EdgetlError, match="refusing engine"):
            check_engine(path, other)
    # Same name, other bundle: changing any bundle file changes the manifest and the key.
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["labels"] = list(reversed(manifest["labels"]))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert engine_key(bundle, key.gpu, key.compute_capability, key.tensorrt).bundle_sha256 != key.bundle_sha256
    with pytest.raises(EdgetlError, match="bundle_sha256"):
        check_engine(path, engine_key(bundle, key.gpu, key.compute_capability, key.tensorrt))
    with pytest.raises(EdgetlError, match="no TensorRT engine"):
        check_engine(bundle / "engines" / "missing.engine", key)
    assert EngineKey("ab" * 32, "Orin (nvgpu)", "8.7", "10.3.0").filename() == \
        f"{'ab' * 8}-orin-nvgpu-sm87-trt10.3.0.engine"


def test_int8_bundle_contents(orin_int8_bundle):
    m = manifest_json(orin_int8_bundle)
    assert m["backend"] == "tensorrt" and m["precision"] == "int8" and m["metrics_backend"] == "onnxruntime"
    assert {"backbone.onnx", "backbone.fp32.onnx", "backbone.calibration.cache", "head.npz"} <= set(m["files"])
    qdq = m["export"]["validation"]["qdq"]
    assert qdq["convs"] == qdq["convs_qdq_activation"] == qdq["convs_int8_weight"] == 49
    assert qdq["convs_float_weight_qdq"] == 0  # weights stored int8, not float behind a Q/DQ pair
    # int8 weights: the INT8 file is a fraction of the FP32 one (0.27x measured; 1.01x with float weights)
    assert (orin_int8_bundle / "backbone.onnx").stat().st_size <= 0.3 * (orin_int8_bundle / "backbone.fp32.onnx").stat().st_size
    assert m["export"]["opset"] == 19 and m["model"]["input"]["shape"] == [-1, 3, 224, 224]
    assert (orin_int8_bundle / "backbone.calibration.cache").read_text().startswith("TRT-10300-EntropyCalibration2\n")
    metrics = m["metrics"]
    # The FP32 ONNX on onnxruntime reproduces the torch run on the same 50 images (within one image).
    assert abs(metrics["fp32"]["top1"] - metrics["torch"]["top1"]) <= 1 / metrics["val"]["n"] + 1e-9
    assert metrics["int8"]["top1"] >= 0.7 and metrics["int8"]["n"] == metrics["val"]["n"] == 50
    correct = {p: sum(row[i] for i, row in enumerate(metrics[p]["confusion"])) for p in ("fp32", "int8")}
    assert metrics["gate"]["drop_pts"] == pytest.approx((correct["fp32"] - correct["int8"]) * 100 / 50)
    assert metrics["gate"]["tolerance_pts"] == 1.0  # targets/jetson-orin-nano.yaml


def test_print_trtexec_and_build_without_tensorrt(orin_int8_bundle):
    proc = run_cli(DEVICE, "build-engine", orin_int8_bundle, "--print-trtexec")
    assert proc.returncode == 0, proc.stderr
    args = shlex.split(proc.stdout.strip())
    assert args[0] == "trtexec" and "--int8" in args and "--memPoolSize=workspace:1024" in args
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        proc = run_cli(DEVICE, "build-engine", orin_int8_bundle)
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: TensorRT's Python package is not importable") and \
            proc.stderr.count("\n") == 1


def test_jetson_nano_int8_is_refused_naming_maxwell_and_fp16(trained_run, tmp_path):
    proc = run_cli(EDGETL, "export", trained_run, "--target", "jetson-nano", "--precision", "int8",
                   "--out", tmp_path / "nano")
    assert proc.returncode == 1
    assert "Maxwell" in proc.stderr and "fp16" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "nano").exists()


def test_tensorrt_backend_and_engine_modules_are_torch_free():
    code = ("import sys\n"
            "import edgetl.backends.tensorrt, edgetl.backends.engine, edgetl.cli.device\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'onnx'))\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------
# Needs TensorRT (a Jetson or an NVIDIA GPU machine)
# ------------------------------------------------------------------------------------

@pytest.mark.tensorrt
def test_build_engine_and_run_matches_onnxruntime(orin_int8_bundle, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed: engines are built on a Jetson / NVIDIA GPU")
    pytest.importorskip("cuda", reason="cuda-python is not installed (pip install 'edgetl[tensorrt]')")
    import shutil

    from edgetl.backends import open_backend
    from edgetl.runtime.predictor import Predictor

    bundle = tmp_path / "bundle"
    shutil.copytree(orin_int8_bundle, bundle)
    proc = run_cli(DEVICE, "build-engine", bundle, "--timing-cache", tmp_path / "timing.cache", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()).is_file() and (tmp_path / "timing.cache").stat().st_size > 0
    m = manifest_json(bundle)
    trt_pred = Predictor.open(bundle)
    ort_pred = Predictor(bundle, m, open_backend("onnxruntime", bundle / m["model"]["file"], m["model"], 2))
    images = demo_images(1)
    a, b = trt_pred.embed(images), ort_pred.embed(images)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, cos
