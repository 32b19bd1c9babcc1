"""Drift detection (issue 17): the MMD permutation test, and `edgetl-device drift` torch-free
on the demo bundle: a clean disjoint subset passes (exit 0), the simulated cheap camera is
flagged (exit 4)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmarks.camera_shift import shift_folder
from edgetl.errors import EdgetlError
from edgetl.ondevice.drift import mmd_test
from tests.conftest import DEMO
from tests.ondevice_support import copy_bundle, device


def test_mmd_test_separates_shifted_from_same_and_is_seeded():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 16))
    same, shifted = rng.normal(size=(50, 16)), rng.normal(size=(50, 16)) + 0.5
    score, p_same, bandwidth, _ = mmd_test(reference, same, 500, seed=1)
    assert p_same > 0.05 and abs(score) < 0.01 and bandwidth > 0
    assert mmd_test(reference, same, 500, seed=1) == (score, p_same, bandwidth, _)
    assert mmd_test(reference, shifted, 500, seed=1)[1] < 0.01


def test_false_alarms_stay_near_alpha_on_synthetic_data():
    """100 tests of samples drawn like the reference at alpha 0.05: about 5 alarms (binomial
    95% range 1 to 10)."""
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(120, 8))
    alarms = sum(mmd_test(reference, rng.normal(size=(30, 8)), 200, seed=i)[1] <= 0.05 for i in range(100))
    assert alarms <= 10


@pytest.fixture(scope="session")
def drift_sets(trained_run, tmp_path_factory) -> dict:
    """40 training-side demo images (never in the bundle's reference set, which holds the run's
    validation images) as they are, and through the simulated cheap camera."""
    record = json.loads((trained_run / "metrics.json").read_text())["data"]
    files = sorted(record["train_files"] + record["selection_files"])
    picked = [files[i] for i in np.random.default_rng(0).choice(len(files), 40, replace=False)]
    root = tmp_path_factory.mktemp("drift")
    clean = root / "clean"
    for rel in picked:
        (clean / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO / rel, clean / rel)
    return {"clean": clean, "shifted": shift_folder(DEMO, root / "shifted", 0, picked)}


@pytest.mark.slow
def test_device_drift_flags_the_cheap_camera_not_a_clean_subset(fp32_bundle, drift_sets, tmp_path):
    bundle = copy_bundle(fp32_bundle, tmp_path / "bundle")
    clean = device("drift", bundle, drift_sets["clean"], "--json", "--seed", "0")  # torch-free (DEVICE_ENV)
    assert clean.returncode == 0, clean.stderr
    result = json.loads(clean.stdout)
    assert result["drift"] is False and result["p_value"] > 0.05 and result["n_recent"] == 40
    shifted = device("drift", bundle, drift_sets["shifted"], "--json", "--seed", "0")
    assert shifted.returncode == 4, shifted.stderr
    result = json.loads(shifted.stdout)
    assert result["drift"] is True and result["p_value"] <= 0.05 and result["score"] > result["threshold"]
    text = device("drift", bundle, drift_sets["shifted"], "--permutations", "200")
    assert text.returncode == 4 and "DRIFT" in text.stdout and "p-value" in text.stdout


@pytest.mark.slow
def test_device_drift_refusals(fp32_bundle, drift_sets, tmp_path, monkeypatch):
    from edgetl import ondevice
    from edgetl.bundle import Bundle

    bundle = copy_bundle(fp32_bundle, tmp_path / "bundle")
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(drift_sets["clean"].rglob("*"))[:6]:
        if p.is_file():
            shutil.copyfile(p, few / p.name)
    result = device("drift", bundle, few)
    assert result.returncode == 1 and "drift needs at least 10 recent images" in result.stderr
    assert device("drift", bundle, drift_sets["clean"], "--alpha", "nan").returncode == 2
    monkeypatch.setattr(Bundle, "reference", lambda self, *task: None)  # any task: none
    with pytest.raises(EdgetlError, match="has no reference set"):
        ondevice.drift(bundle, drift_sets["clean"])
