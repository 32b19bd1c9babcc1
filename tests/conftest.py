"""Shared fixtures: real data from ../shared/data and the repo's demo set; no mocks."""

from __future__ import annotations

import json
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


# Fixtures that train or convert a real model: a test using one is in the full tier only
# (`make test`); `make test-fast` runs the rest (`-m "not slow"`).
HEAVY_FIXTURES = {"trained_run", "int8_bundle", "fp32_bundle", "orin_int8_bundle", "device_bundle", "lite0",
                  "fp32_onnx", "qdq", "schema1_bundle"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def run_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a real CLI process (EDGETL, DEVICE) and capture its output."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


def manifest_json(bundle: Path) -> dict:
    """A bundle's manifest.json as written (what a reader without edgetl sees)."""
    return json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))


def val_images(run_dir: Path, n: int | None = None) -> tuple[list[Path], list[int]]:
    """The validation split a run recorded in metrics.json: (paths, class indices)."""
    from edgetl.data import split_from_record

    split = split_from_record(json.loads((Path(run_dir) / "metrics.json").read_text())["data"])
    items = split.val[:n] if n else split.val
    return [p for p, _ in items], [c for _, c in items]


def val_folder(run_dir: Path, dst: Path) -> Path:
    """The run's validation split as DATA/<class>/ symlinks, for the folder-taking commands."""
    labels = json.loads((Path(run_dir) / "metrics.json").read_text())["data"]["labels"]
    for path, y in zip(*val_images(run_dir)):
        link = dst / labels[y] / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, link)
    return dst


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
