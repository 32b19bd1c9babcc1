"""Targets and calibration recipes are data: the shipped files load, bad files are refused
with the file and the key named."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from edgetl.quantize.recipes import (load_recipe, list_recipes, require_method,
                                     select_calibration_images)
from edgetl.targets import Target, list_targets, load_target
from edgetl.yamlcfg import ConfigError

EDGETL = str(Path(sys.executable).parent / "edgetl")

GOOD = """\
name: {name}
description: test board
runtime: tflite
precisions: [int8, fp32]
default_precision: int8
threads: 2
layout: NHWC
latency_budget_ms: 40
accuracy_tolerance_pts: 1.0
calibration: minmax
"""


def write(tmp_path: Path, text: str, name: str = "board") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_shipped_targets_load_and_are_frozen():
    targets = {t.name: t for t in list_targets()}
    assert {"rpi4", "rpi5", "generic-arm64"} <= set(targets)
    rpi5 = load_target("rpi5")
    assert rpi5 == targets["rpi5"]
    assert rpi5.runtime == "tflite" and rpi5.layout == "NHWC" and rpi5.default_precision in rpi5.precisions
    assert rpi5.threads >= 1 and rpi5.latency_budget_ms > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        rpi5.threads = 8  # type: ignore[misc]
    assert "path" not in rpi5.to_dict() and rpi5.to_dict()["precisions"] == list(rpi5.precisions)


def test_target_by_path(tmp_path):
    t = load_target(write(tmp_path, GOOD.format(name="board")))
    assert isinstance(t, Target) and t.precisions == ("int8", "fp32") and t.latency_budget_ms == 40.0


@pytest.mark.parametrize("edit, key", [
    (lambda s: s + "thread: 4\n", "thread"),                                   # typo = unknown key
    (lambda s: s.replace("runtime: tflite", "runtime: coreml"), "runtime"),
    (lambda s: s.replace("layout: NHWC", "layout: HWC"), "layout"),
    (lambda s: s.replace("threads: 2", "threads: two"), "threads"),
    (lambda s: s.replace("threads: 2", "threads: 0"), "threads"),
    (lambda s: s.replace("default_precision: int8", "default_precision: fp16"), "default_precision"),
    (lambda s: s.replace("precisions: [int8, fp32]", "precisions: [int4]"), "precisions[0]"),
    (lambda s: s.replace("calibration: minmax", "calibration: nosuch"), "calibration"),
    (lambda s: s.replace("latency_budget_ms: 40\n", ""), "latency_budget_ms"),
    (lambda s: s + "jetpack: '6.0'\n", "jetpack"),                             # TensorRT-only key on tflite
    (lambda s: s.replace("name: board", "name: other"), "name"),
])
def test_bad_target_names_file_and_key(tmp_path, edit, key):
    path = write(tmp_path, edit(GOOD.format(name="board")))
    with pytest.raises(ConfigError) as err:
        load_target(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)


def test_tensorrt_target_fields(tmp_path):
    text = GOOD.format(name="jet").replace("runtime: tflite", "runtime: tensorrt").replace("NHWC", "NCHW")
    text += "jetpack: 6.0\ntensorrt: '8.6.2'\ncompute_capability: 8.7\ngpu_arch: ampere\ndla_cores: 2\n" \
            "workspace_mb: 1024\nonnx_opset: 17\n"
    t = load_target(write(tmp_path, text, "jet"))
    assert (t.jetpack, t.tensorrt, t.compute_capability, t.dla_cores, t.onnx_opset) == ("6.0", "8.6.2", "8.7", 2, 17)


def test_unknown_target_lists_choices():
    with pytest.raises(ConfigError, match="rpi5"):
        load_target("no-such-board")


def test_invalid_yaml_names_file(tmp_path):
    path = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_target(path)


def test_shipped_recipes_load():
    recipes = {r.name: r for r in list_recipes()}
    assert {"minmax", "percentile", "entropy", "moving-average"} <= set(recipes)
    assert recipes["percentile"].percentile is not None and 50 < recipes["percentile"].percentile <= 100
    assert all(r.selection == "stratified" and r.samples > 0 for r in recipes.values())


@pytest.mark.parametrize("text, key", [
    ("name: r\ndescription: x\nsamples: 8\nmethod: median\n", "method"),
    ("name: r\ndescription: x\nsamples: 8\nmethod: percentile\n", "percentile"),
    ("name: r\ndescription: x\nsamples: 8\nmethod: minmax\npercentile: 99.9\n", "percentile"),
    ("name: r\ndescription: x\nsamples: 0\nmethod: minmax\n", "samples"),
    ("name: r\ndescription: x\nsamples: 8\nmethod: minmax\nselection: random\n", "selection"),
    ("name: r\ndescription: x\nsamples: 8\nmethod: minmax\nper_channel: true\n", "per_channel"),
])
def test_bad_recipe_names_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text, "r")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)


def test_require_method_names_alternatives():
    with pytest.raises(ConfigError) as err:
        require_method(load_recipe("entropy"), ("minmax", "moving_average"), "the tflite exporter")
    assert "'entropy'" in str(err.value) and "minmax" in str(err.value) and "moving-average" in str(err.value)
    require_method(load_recipe("minmax"), ("minmax",), "x")


def test_stratified_selection_is_seeded_and_proportional():
    labels = ["a"] * 70 + ["b"] * 25 + ["c"] * 5
    paths = [f"img{i}.jpg" for i in range(100)]
    recipe = dataclasses.replace(load_recipe("minmax"), samples=20, seed=3)
    picked = select_calibration_images(paths, labels, recipe)
    assert picked == select_calibration_images(paths, labels, recipe)
    assert len(picked) == 20 and len(set(picked)) == 20
    counts = Counter(labels[paths.index(p)] for p in picked)
    assert counts == {"a": 14, "b": 5, "c": 1}
    other = select_calibration_images(paths, labels, dataclasses.replace(recipe, seed=4))
    assert other != picked
    # a rare class is represented even when its proportional share rounds to zero
    rare = select_calibration_images(paths, labels, dataclasses.replace(recipe, samples=5))
    assert {labels[paths.index(p)] for p in rare} == {"a", "b", "c"} and len(rare) == 5
    assert sorted(select_calibration_images(paths, labels, dataclasses.replace(recipe, samples=500))) == sorted(paths)


def test_targets_cli_lists_targets():
    out = subprocess.run([EDGETL, "targets", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names = {t["name"] for t in json.loads(out.stdout)}
    assert {"rpi4", "rpi5", "generic-arm64"} <= names
    table = subprocess.run([EDGETL, "targets"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0 and "rpi5" in table.stdout and "cortex-a76" in table.stdout
    # Piped (a CI log, no COLUMNS): every name is whole, since names are what --target takes.
    piped = subprocess.run([EDGETL, "targets"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert all(name in piped.stdout for name in names), piped.stdout
