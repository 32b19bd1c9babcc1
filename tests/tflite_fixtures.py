"""Session fixtures shared by the TFLite export, runtime and bundle tests: real bundles
exported from the real demo run (EfficientNet-Lite0 weights), built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EDGETL, run_cli


@pytest.fixture(scope="session")
def int8_bundle(trained_run, small_recipe, tmp_path_factory) -> Path:
    """`edgetl export RUN --target rpi5 --precision int8 --fused` through the real CLI."""
    out = tmp_path_factory.mktemp("dist") / "rpi5-int8"
    proc = run_cli(EDGETL, "export", trained_run, "--target", "rpi5", "--precision", "int8", "--calib-recipe",
                   small_recipe, "--fused", "--allow-accuracy-drop", "--recover", "off", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["precision"] == "int8"  # --json output is clean JSON
    return out


@pytest.fixture(scope="session")
def fp32_bundle(trained_run, tmp_path_factory) -> Path:
    import edgetl

    out = tmp_path_factory.mktemp("dist") / "rpi5-fp32"
    assert edgetl.export(trained_run, "rpi5", out, "fp32").passed
    return out
