"""A bundle is trusted only as shipped: a flipped byte, a truncated file or an edited
manifest is refused with an error naming the file, before any inference runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgetl.bundle import BundleError, manifest_digest
from tests.conftest import manifest_json
from edgetl.core.fsutil import sha256_file
from edgetl.runtime.predictor import Predictor
from tests.conftest import DEMO
from tests.conftest import DEVICE, run_cli


@pytest.fixture
def bundle(int8_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(int8_bundle, tmp_path / "bundle"))


def edit_manifest(bundle: Path, change, redigest: bool = False) -> None:
    """Edit the manifest; with `redigest`, also recompute its own sha256 (a deliberate edit
    that the file digests must still catch)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    if redigest:
        manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def test_intact_bundle_opens(bundle):
    assert Predictor.open(bundle).predict(sorted(DEMO.glob("*/*"))[0])[0].label in manifest_json(bundle)["labels"]


@pytest.mark.parametrize("name", ["backbone.tflite", "head.npz", "reference.npz", "labels.txt", "model.tflite"])
def test_flipped_byte_is_refused(bundle, name):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name}' does not match its sha256"):
        Predictor.open(bundle)


@pytest.mark.parametrize("name", ["backbone.tflite", "head.npz"])
def test_truncated_file_is_refused(bundle, name):
    path = bundle / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BundleError, match="tampered or truncated") as err:
        Predictor.open(bundle)
    assert str(path) in str(err.value)


def test_missing_file_is_refused(bundle):
    (bundle / "head.npz").unlink()
    with pytest.raises(BundleError, match="head.npz' is missing"):
        Predictor.open(bundle)


@pytest.mark.parametrize("edit", [
    lambda m: m["preprocess"].update(mean=[0.0, 0.0, 0.0]),
    lambda m: m.update(labels=list(reversed(m["labels"]))),
    lambda m: m["metrics"].update(top1=1.0),
])
def test_edited_manifest_is_refused(bundle, edit):
    edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match="manifest.json' does not match its manifest_sha256"):
        Predictor.open(bundle)


def test_redigested_manifest_edits_are_still_caught(bundle):
    edit_manifest(bundle, lambda m: m["files"].update({"backbone.tflite": "0" * 64}), redigest=True)
    with pytest.raises(BundleError, match="backbone.tflite' does not match"):
        Predictor.open(bundle)
    edit_manifest(bundle, lambda m: m["files"].update({"backbone.tflite": sha256_file(bundle / "backbone.tflite")}),
                  redigest=True)
    Predictor.open(bundle)  # restored
    edit_manifest(bundle, lambda m: m.update(labels=list(reversed(m["labels"]))), redigest=True)
    with pytest.raises(BundleError, match="labels.txt' differs"):
        Predictor.open(bundle)


def test_schema_and_truncated_manifest_are_refused(bundle):
    edit_manifest(bundle, lambda m: m.update(schema=99))
    with pytest.raises(BundleError, match="schema 99"):
        Predictor.open(bundle)
    (bundle / "manifest.json").write_text('{"schema": 1, "tar')
    with pytest.raises(BundleError, match="manifest.json' is corrupt"):
        Predictor.open(bundle)


def test_device_cli_refuses_tampered_bundle_in_one_line(bundle):
    path = bundle / "backbone.tflite"
    path.write_bytes(path.read_bytes()[:-100])
    proc = run_cli(DEVICE, "predict", bundle, sorted(DEMO.glob("*/*"))[0])
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(path) in lines[0] and "re-copy or re-export" in lines[0]
    assert "Traceback" not in proc.stderr


def test_head_shape_mismatch_is_refused(bundle):
    """A head that does not fit the backbone is refused even when its sha256 is consistent."""
    import numpy as np

    np.savez(bundle / "head.npz", weight=np.zeros((3, 7), np.float32), bias=np.zeros(3, np.float32))
    edit_manifest(bundle, lambda m: m["files"].update({"head.npz": sha256_file(bundle / "head.npz")}), redigest=True)
    with pytest.raises(BundleError, match=r"head.*expected"):
        Predictor.open(bundle)
