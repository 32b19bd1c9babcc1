"""What the on-device tests share: `edgetl-device` in a torch-free subprocess, bundle copies,
local class folders with bad files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import DEVICE as DEVICE_CLI  # noqa: E402  (one definition of the device CLI path)
# torch, timm and onnx made unimportable, as on a device.
# Wide lines so rich does not wrap file names in the log.
DEVICE_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).with_name("no_torch")), "COLUMNS": "400"}


def device(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DEVICE_CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=DEVICE_ENV)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("heads"))
    return dst


def make_class_folders(root: Path, classes: dict[str, list[Path]]) -> Path:
    for label, paths in classes.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copyfile(p, root / label / p.name)
    return root


def add_bad_files(folder: Path) -> list[str]:
    """A zero-byte JPEG, a truncated JPEG and a text file; returns their names."""
    good = next(p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg"))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image")
    return ["empty.jpg", "truncated.jpg", "notes.txt"]


def heads_json(bundle: Path) -> dict:
    result = device("heads", bundle, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
