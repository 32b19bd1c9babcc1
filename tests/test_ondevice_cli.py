"""On-device adaptation end to end: real bundle, real images, `edgetl-device` in subprocesses
with torch/timm/onnx unimportable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO, HYMENOPTERA
from tests.ondevice_support import (DEVICE_CLI, DEVICE_ENV, add_bad_files, copy_bundle, device,
                                    heads_json, make_class_folders)


N_SKIP = 8  # local data starts after the first images of each digit class


def _digits(label: str) -> list[Path]:
    return sorted((DEMO / label).iterdir())


def _local(label: str, n: int = 10) -> list[Path]:
    return _digits(label)[N_SKIP:N_SKIP + n]




def _ants() -> list[Path]:
    """Ant photos as a class the demo bundle has never seen (shared data; skip without it)."""
    folder = HYMENOPTERA / "train" / "ants"
    if not folder.is_dir():
        pytest.skip(f"shared data '{HYMENOPTERA}' is not beside the repository")
    return sorted(folder.iterdir())

NEW_CLASS = "fourmi ant ü"  # unicode and spaces on purpose


@pytest.fixture(scope="session")
def device_bundle(int8_bundle, tmp_path_factory) -> Path:
    """The demo run's real INT8 TFLite bundle (with its reference set), plus an embedding cache
    of the local images computed by the bundle's own backbone."""
    from edgetl.backends import Backbone
    from edgetl.bundle import Bundle
    from edgetl.ondevice.embedcache import embed_files

    bundle = copy_bundle(int8_bundle, tmp_path_factory.mktemp("bundles") / "int8")
    b = Bundle.open(bundle)
    assert b.reference() is not None
    labels = [d.name for d in sorted(DEMO.iterdir()) if d.is_dir()]
    local = [p for lab in labels for p in _local(lab, 16)] + (_ants()[:24] if HYMENOPTERA.is_dir() else [])
    embed_files(b, local, lambda: Backbone.open(b))
    return bundle


@pytest.fixture
def bundle(device_bundle, tmp_path) -> Path:
    return copy_bundle(device_bundle, tmp_path / "bundle")


def test_retrain_new_unicode_class_skips_bad_files(bundle, tmp_path):
    data = make_class_folders(tmp_path / "data", {"3": _local("3"), "4": _local("4"), NEW_CLASS: _ants()[:10]})
    bad = add_bad_files(data / "3")
    result = device("retrain", bundle, data)
    assert result.returncode == 0, result.stderr
    for name in bad:
        assert name in result.stderr
    assert "3 of 33 files skipped" in result.stderr
    index = heads_json(bundle)
    assert index["active"] == 1 and index["problems"] == []
    v1 = index["versions"][1]
    assert v1["labels"][-1] == NEW_CLASS and v1["parent"] == 0 and v1["metrics"]["new_labels"] == [NEW_CLASS]
    assert v1["metrics"]["guardrail"]["passed"]
    assert v1["metrics"]["held_out_top1"] >= 0.8

    from edgetl.runtime.predictor import Predictor

    predictions = Predictor.open(bundle).predict(_ants()[10:20])
    assert np.mean([p.label == NEW_CLASS for p in predictions]) >= 0.8


def test_class_below_min_images_is_a_clear_error(bundle, tmp_path):
    data = make_class_folders(tmp_path / "data", {"3": _local("3"), "4": _local("4", 2)})
    result = device("retrain", bundle, data)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: '{data / '4'}' has 2 usable image(s); each class needs at least 5 (add images or lower min_images)")
    assert not (bundle / "heads" / "index.json").exists()


def test_single_class_retrain_is_a_clear_error_but_add_class_works(bundle, tmp_path):
    data = make_class_folders(tmp_path / "data", {"ants": _ants()[:10]})
    result = device("retrain", bundle, data)
    assert result.returncode == 1
    assert "has only the class folder 'ants'; retrain needs at least two classes" in result.stderr
    result = device("add-class", bundle, "ants", data / "ants")
    assert result.returncode == 0, result.stderr
    assert heads_json(bundle)["versions"][1]["labels"][-1] == "ants"


def test_add_class_keeps_other_rows_and_rollback(bundle, tmp_path):
    from edgetl.bundle import Bundle

    result = device("add-class", bundle, NEW_CLASS, *_ants()[:10], "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["version"] == 1 and summary["metrics"]["support_accuracy"] >= 0.9
    b = Bundle.open(bundle)
    factory, (_, active) = b.factory_head(), b.active_head()
    np.testing.assert_array_equal(active.weight[:-1], factory.weight)  # other classes untouched
    np.testing.assert_array_equal(active.bias[:-1], factory.bias)

    table = device("heads", bundle)
    assert table.returncode == 0 and NEW_CLASS in table.stdout and "add-class" in table.stdout

    assert device("rollback", bundle).returncode == 0
    assert heads_json(bundle)["active"] == 0
    assert device("rollback", bundle, "1").returncode == 0
    assert heads_json(bundle)["active"] == 1
    assert device("rollback", bundle, "0").returncode == 0
    again = device("rollback", bundle)
    assert again.returncode == 1 and "factory head" in again.stderr
    missing = device("rollback", bundle, "7")
    assert missing.returncode == 1 and "head version 7 is not in" in missing.stderr


def test_guardrail_refuses_mislabeled_data(bundle, tmp_path):
    # Each digit's images filed under the next digit's name: a plausible field mistake.
    data = make_class_folders(tmp_path / "data", {"3": _local("5"), "4": _local("3"), "5": _local("4")})
    result = device("retrain", bundle, data)
    assert result.returncode == 3, result.stderr
    assert "guardrail refused the new head; version 0 stays active" in result.stderr
    assert "reference set" in result.stderr
    assert heads_json(bundle)["active"] == 0 and len(heads_json(bundle)["versions"]) == 1

    forced = device("retrain", bundle, data, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert "FORCED" in forced.stderr
    index = heads_json(bundle)
    assert index["active"] == 1 and index["versions"][1]["metrics"]["forced"] is True


def test_predictor_follows_the_active_head_without_restart(bundle):
    from edgetl.runtime.predictor import Predictor

    predictor = Predictor.open(bundle)
    images = _ants()[10:14]
    before = [p.label for p in predictor.predict(images)]
    assert NEW_CLASS not in predictor.labels
    assert device("add-class", bundle, NEW_CLASS, *_ants()[:10]).returncode == 0
    after = [p.label for p in predictor.predict(images)]
    assert predictor.labels[-1] == NEW_CLASS and after.count(NEW_CLASS) >= 3
    assert device("rollback", bundle).returncode == 0
    assert [p.label for p in predictor.predict(images)] == before


def test_tampered_active_head_is_refused_by_the_predictor(bundle):
    from edgetl.errors import EdgetlError
    from edgetl.runtime.predictor import Predictor

    assert device("add-class", bundle, NEW_CLASS, *_ants()[:10]).returncode == 0
    head = bundle / "heads" / "v0001.npz"
    data = bytearray(head.read_bytes())
    data[-200] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(EdgetlError, match="does not match its sha256"):
        Predictor.open(bundle)
    result = device("heads", bundle)
    assert "problem" in result.stderr and "v0001.npz" in result.stderr


def test_sigkill_during_retrain_never_corrupts_the_store(bundle, tmp_path):
    """>= 50 SIGKILLs at seeded random moments: anywhere in the run, in the fit-guardrail-write
    window, or within 10 ms after the head file write starts; every 10 kills the store is
    deleted so kills also land while it is created."""
    from tests.killtest import kill_retrain, store_is_sound

    data = make_class_folders(tmp_path / "data", {"3": _local("3"), "4": _local("4"), NEW_CLASS: _ants()[:10]})
    report = kill_retrain(DEVICE_CLI, bundle, data, kills=50, seed=20261125, env=DEVICE_ENV, reset_every=10)
    print(report)
    assert report.kills == 50 and report.corrupt == 0
    result = device("retrain", bundle, data, "--force")  # and the store still takes new versions
    assert result.returncode == 0, result.stderr
    assert store_is_sound(bundle)
