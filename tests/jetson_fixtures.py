"""Session fixtures for the Jetson (TensorRT) tests: the real Lite0 backbone as ONNX, its
QDQ INT8 version calibrated on real demo images, and a real int8 bundle from the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import DEMO, EDGETL, run_cli


def demo_images(per_class: int, offset: int = 0) -> list[Path]:
    return [p for d in sorted(DEMO.iterdir()) if d.is_dir() for p in sorted(d.iterdir())[offset:offset + per_class]]


@pytest.fixture(scope="session")
def lite0():
    from edgetl.backbones import create_backbone, get_spec

    spec = get_spec("tf_efficientnet_lite0")
    backbone, _ = create_backbone(spec.name)
    return backbone.eval(), spec.preprocess("NCHW")


@pytest.fixture(scope="session")
def fp32_onnx(lite0, tmp_path_factory):
    from edgetl.formats.onnx_tensorrt import export_onnx

    backbone, pre = lite0
    images = pre.batch(demo_images(1)[:3])
    return export_onnx(backbone, pre.size, tmp_path_factory.mktemp("onnx") / "fp32.onnx", 17, check_images=images)


@pytest.fixture(scope="session")
def qdq(fp32_onnx, lite0, tmp_path_factory):
    from edgetl.formats.onnx_tensorrt import quantize_qdq
    from edgetl.quantize.recipes import load_recipe

    _, pre = lite0
    recipe = dataclasses.replace(load_recipe("minmax"), samples=20)
    calib = [pre.batch([p]) for p in demo_images(2)]
    return quantize_qdq(fp32_onnx.path, tmp_path_factory.mktemp("qdq") / "int8.onnx", calib, recipe)


@pytest.fixture(scope="session")
def orin_int8_bundle(trained_run, small_recipe, tmp_path_factory) -> Path:
    """`edgetl export RUN --target jetson-orin-nano --precision int8` through the real CLI.

    The demo validation split has 50 images (one image = 2 points, above the 1-point
    tolerance), so the gate is recorded but not enforced here; bench_qdq.py measures the
    INT8 drop on the real data sets."""
    out = tmp_path_factory.mktemp("dist") / "orin-int8"
    proc = run_cli(EDGETL, "export", trained_run, "--target", "jetson-orin-nano", "--precision", "int8",
                   "--calib-recipe", small_recipe, "--allow-accuracy-drop", "--recover", "off", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
