"""Bundles already in the field keep working: a schema-1 bundle (as edgetl 0.1 wrote it
before the typed Manifest) opens, predicts and retrains with this version."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from edgetl.bundle import SCHEMA_VERSION, Bundle, BundleError, Manifest
from edgetl.core.fsutil import sha256_file
from tests.conftest import DEMO
from tests.ondevice_support import device, make_class_folders


def write_schema1_manifest(bundle: Path) -> None:
    """The schema-1 writer, kept for this test: the same keys, `schema: 1`, the validation
    data's absolute root in `metrics.val`, every file's sha256 and the digest of the manifest's
    canonical JSON without its own digest (edgetl 0.1's bundle.write_bundle)."""
    body = json.loads((bundle / "manifest.json").read_text())
    body.pop("manifest_sha256")
    body.pop("data", None)
    body["schema"] = 1
    body["metrics"]["val"] = {"source": "run validation split", "root": str(DEMO.resolve()), "seed": 0,
                              "val_split": 0.2, "n": body["metrics"]["val"]["n"]}
    body["files"] = {name: sha256_file(bundle / name) for name in body["files"]}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    body["manifest_sha256"] = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")


@pytest.fixture
def schema1_bundle(int8_bundle, tmp_path) -> Path:
    bundle = Path(shutil.copytree(int8_bundle, tmp_path / "old-bundle", ignore=shutil.ignore_patterns("heads", "cache")))
    write_schema1_manifest(bundle)
    return bundle


def test_schema1_bundle_opens_predicts_and_retrains(schema1_bundle, tmp_path):
    from edgetl.runtime import Predictor

    b = Bundle.open(schema1_bundle)
    assert b.manifest.schema == 1 and SCHEMA_VERSION == 2
    images = sorted((DEMO / "7").iterdir())[:3]
    assert [p.label for p in Predictor.open(schema1_bundle).predict(images)].count("7") >= 2
    data = make_class_folders(tmp_path / "local", {c: sorted((DEMO / c).iterdir())[4:14] for c in ("3", "7")})
    result = device("retrain", schema1_bundle, data, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    assert json.loads((schema1_bundle / "heads" / "index.json").read_text())["binding"]["embedding_dim"] == 1280


def test_schema1_edit_is_still_refused(schema1_bundle):
    path = schema1_bundle / "manifest.json"
    body = json.loads(path.read_text())
    body["preprocess"]["size"] = 320
    path.write_text(json.dumps(body))
    with pytest.raises(BundleError, match="manifest_sha256"):
        Bundle.open(schema1_bundle)


def test_unknown_schema_is_refused_by_name(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 99}))
    with pytest.raises(BundleError, match="schema 99.*reads schemas 1, 2"):
        Manifest.read(tmp_path)
