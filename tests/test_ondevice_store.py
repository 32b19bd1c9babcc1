"""Head store: round trip, integrity, no pickle, crash leftovers, independent tasks."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from edgetl.errors import EdgetlError
from edgetl.core.fsutil import sha256_file
from edgetl.bundle.heads import Head, HeadStore


def _head(seed: int, labels=("ants", "bees")) -> Head:
    rng = np.random.default_rng(seed)
    return Head(rng.normal(size=(len(labels), 16)).astype(np.float32), rng.normal(size=len(labels)).astype(np.float32),
                tuple(labels))


def _store_with_two_versions(tmp_path) -> HeadStore:
    store = HeadStore(tmp_path)
    with store.writer(lambda: _head(0)) as w:
        w.add(_head(1, ("ants", "bees", "çà et là 5")), parent=0, source="test", data_digest="d", metrics={"x": 1},
              activate=True)
    return store


def test_round_trip_and_index(tmp_path):
    store = _store_with_two_versions(tmp_path)
    index = json.loads((tmp_path / "heads" / "index.json").read_text(encoding="utf-8"))
    assert index["active"] == 1
    assert [e["version"] for e in index["versions"]] == [0, 1]
    assert index["versions"][1]["parent"] == 0 and index["versions"][1]["metrics"] == {"x": 1}
    assert index["versions"][1]["labels"] == ["ants", "bees", "çà et là 5"]
    version, head = store.load_active()
    expected = _head(1, ("ants", "bees", "çà et là 5"))
    assert version == 1 and head.labels == expected.labels
    np.testing.assert_array_equal(head.weight, expected.weight)
    np.testing.assert_array_equal(store.load(0).bias, _head(0).bias)
    assert store.verify() == []


def test_tampered_head_is_refused(tmp_path):
    store = _store_with_two_versions(tmp_path)
    path = tmp_path / "heads" / "v0001.npz"
    tampered = _head(1, ("ants", "bees", "çà et là 5"))
    path.write_bytes(Head(tampered.weight * 2, tampered.bias, tampered.labels).to_bytes())
    with pytest.raises(EdgetlError, match="does not match its sha256"):
        store.load_active()
    assert store.load(0).labels == ("ants", "bees")  # the others still load
    assert len(store.verify()) == 1
    with store.writer(lambda: _head(0)) as w, pytest.raises(EdgetlError, match="sha256"):
        w.activate(1)


def test_pickled_head_is_never_loaded(tmp_path):
    store = _store_with_two_versions(tmp_path)
    path = tmp_path / "heads" / "v0001.npz"
    buf = io.BytesIO()
    np.savez(buf, weight=np.array([{"evil": 1}], dtype=object), bias=np.zeros(1), labels=np.array(["a"]))
    path.write_bytes(buf.getvalue())
    index = store.index()
    index["versions"][1]["sha256"] = sha256_file(path)  # even with a matching hash
    (tmp_path / "heads" / "index.json").write_text(json.dumps(index))
    with pytest.raises(EdgetlError, match="unreadable"):
        store.load(1)


def test_crash_leftovers_are_ignored_and_cleaned(tmp_path):
    store = _store_with_two_versions(tmp_path)
    heads = tmp_path / "heads"
    # What a SIGKILL can leave: a head file written but never indexed, temp files of both writes.
    (heads / "v0002.npz").write_bytes(_head(5).to_bytes())
    (heads / ".v0003.npz.abc123.tmp").write_bytes(b"half a head")
    (heads / ".index.json.xyz.tmp").write_bytes(b'{"format": "edgetl.he')
    version, _ = store.load_active()
    assert version == 1 and [e["version"] for e in store.index()["versions"]] == [0, 1]
    with store.writer(lambda: _head(0)) as w:
        assert sorted(p.name for p in heads.iterdir() if not p.name.startswith(".lock")) == \
            ["index.json", "v0000.npz", "v0001.npz"]
        assert w.add(_head(6), parent=1, source="t", data_digest=None, metrics={}, activate=False) == 2
    assert store.active_version() == 1 and store.verify() == []


def test_writers_exclude_each_other(tmp_path):
    store = HeadStore(tmp_path)
    with store.writer(lambda: _head(0)):
        with pytest.raises(EdgetlError, match="another edgetl-device command"):
            with HeadStore(tmp_path).writer(lambda: _head(0)):
                pass


def test_tasks_are_versioned_independently(tmp_path):
    default, other = HeadStore(tmp_path), HeadStore(tmp_path, task="defects")
    _store_with_two_versions(tmp_path)
    with other.writer(lambda: _head(7, ("ok", "scratch"))):
        pass
    assert default.active_version() == 1 and other.active_version() == 0
    assert other.load_active()[1].labels == ("ok", "scratch")
    with pytest.raises(EdgetlError, match="task name"):
        HeadStore(tmp_path, task="../escape")


def test_corrupt_index_is_a_clear_error(tmp_path):
    store = _store_with_two_versions(tmp_path)
    (tmp_path / "heads" / "index.json").write_text("{not json")
    with pytest.raises(EdgetlError, match="is corrupt.*delete"):
        store.load_active()


def test_ondevice_modules_import_without_torch():
    """Every on-device module imports with torch, timm and onnx unimportable (DESIGN.md)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import importlib, pkgutil, sys, edgetl.ondevice as pkg\n"
            "for m in pkgutil.iter_modules(pkg.__path__): importlib.import_module('edgetl.ondevice.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'onnx')))\n")
    env = {"PYTHONPATH": str(Path(__file__).with_name("no_torch")), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
