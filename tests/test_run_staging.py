"""`finetune` stages its run files beside `out` and swaps them in whole: a killed or failed
write leaves the earlier run intact, and folders that are not runs are refused up front."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest


from edgetl.errors import EdgetlError
from edgetl.transfer import FinetuneConfig
from edgetl.transfer.run import finetune
from tests.conftest import DEMO

pytestmark = pytest.mark.slow  # trains a real (short) linear run

RUN_FILES = {"model.pt", "labels.txt", "metrics.json", "training_curve.png"}


def _cfg(seed: int) -> FinetuneConfig:
    return FinetuneConfig(strategy="linear", epochs=5, seed=seed)


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """One real linear run on the demo set, written under umask 022; the module's later runs
    reuse its embedding cache, so they take seconds."""
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("runs") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETL_CACHE", str(cache))
        old_mask = os.umask(0o022)
        try:
            finetune(DEMO, out, _cfg(seed=0))
        finally:
            os.umask(old_mask)
        yield out


# A missing data folder: the destination must be refused before the data is even looked at.
@pytest.mark.parametrize("content,message", [
    ({"notes.txt": "my notes\n"}, "not empty and not an edgetl run"),
    ({"manifest.json": "{}\n", "model.tflite": "x"}, "is an exported bundle"),
    ({"metrics.json": "{}\n", "model.pt": "x", "notes.txt": "keep me\n"}, "also holds notes.txt"),
])
def test_folder_that_is_not_a_run_is_refused_before_training(tmp_path, content, message):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in content.items():
        (out / name).write_text(text)
    before = {name: (out / name).stat() for name in content}
    with pytest.raises(EdgetlError, match=message) as exc:
        finetune(tmp_path / "no-such-data", out, _cfg(seed=0))
    assert f"'{out}'" in str(exc.value) and "pass a new or empty folder" in str(exc.value).lower()
    assert sorted(p.name for p in out.iterdir()) == sorted(content)
    for name, text in content.items():
        assert (out / name).read_text() == text
        assert (out / name).stat().st_mtime_ns == before[name].st_mtime_ns
    assert _leftovers(tmp_path, "mine") == []


def test_run_is_swapped_in_whole_with_ordinary_permissions(first_run):
    assert {p.name for p in first_run.iterdir()} == RUN_FILES
    assert _leftovers(first_run.parent, first_run.name) == []  # no .demo.run-* staging folder
    assert stat.S_IMODE(first_run.stat().st_mode) == 0o755  # not mkdtemp's 0700
    for path in first_run.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def test_second_run_into_the_same_folder_replaces_the_first(first_run):
    old_inode = (first_run / "model.pt").stat().st_ino
    metrics = finetune(DEMO, first_run, _cfg(seed=1))
    assert metrics["config"]["seed"] == 1
    assert json.loads((first_run / "metrics.json").read_text())["config"]["seed"] == 1
    assert (first_run / "model.pt").stat().st_ino != old_inode
    assert {p.name for p in first_run.iterdir()} == RUN_FILES
    assert _leftovers(first_run.parent, first_run.name) == []  # neither staging nor the old run


def test_failure_while_writing_leaves_the_earlier_run_whole(first_run, monkeypatch):
    # Before staging, model.pt was already replaced here while metrics.json was still the old one.
    before = {p.name: p.read_bytes() for p in first_run.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("edgetl.transfer.run.plot_history", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(DEMO, first_run, _cfg(seed=2))
    assert {p.name: p.read_bytes() for p in first_run.iterdir()} == before
    assert _leftovers(first_run.parent, first_run.name) == []
