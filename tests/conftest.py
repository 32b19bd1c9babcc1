"""Shared fixtures: real data from ../shared/data and the repo's demo set; no mocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HYMENOPTERA = SHARED_DATA / "hymenoptera_data"
DIGITS = SHARED_DATA / "sign_language_digits"
DEMO = REPO / "tests" / "data" / "sign-digits-demo"
EDGETL = str(Path(sys.executable).with_name("edgetl"))
DEVICE = str(Path(sys.executable).with_name("edgetl-device"))

# 64 calibration images keep the INT8 test conversions short; the shipped recipes use 128.
SMALL_RECIPE = """\
name: small
description: test recipe
samples: 64
method: minmax
"""

# Session fixtures for the exported bundles: TFLite (int8_bundle, fp32_bundle) and Jetson.
pytest_plugins = ["tests.tflite_fixtures", "tests.jetson_fixtures"]


def run_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a real CLI process (EDGETL, DEVICE) and capture its output."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


def manifest_json(bundle: Path) -> dict:
    """A bundle's manifest.json as written (what a reader without edgetl sees)."""
    import json

    return json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.is_dir(), reason=f"shared data '{path}' is not beside the repository")


@pytest.fixture(scope="session", autouse=True)
def embedding_cache(tmp_path_factory) -> Path:
    """One embedding cache per test session, so tests never read a developer's cache."""
    path = tmp_path_factory.mktemp("edgetl-cache")
    os.environ["EDGETL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A real linear-probe run on the demo set with the installed EfficientNet-Lite0 weights."""
    import edgetl

    out = tmp_path_factory.mktemp("runs") / "demo-linear"
    edgetl.finetune(DEMO, out, strategy="linear", epochs=150, seed=0)
    return out


@pytest.fixture(scope="session")
def small_recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "small.yaml"
    path.write_text(SMALL_RECIPE)
    return path
