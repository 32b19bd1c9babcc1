"""The README's Python API block runs as written, from a clean folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def readme_api_script() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_block_is_short():
    assert len(readme_api_script().strip().splitlines()) <= 15


@pytest.mark.slow
def test_readme_python_api_runs(tmp_path):
    (tmp_path / "tests").mkdir()
    os.symlink(REPO / "tests" / "data", tmp_path / "tests" / "data")
    proc = subprocess.run([sys.executable, "-c", readme_api_script()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("fine-tuned: top1 ") and "INT8 top1" in lines[1]
    assert re.search(r"IMG_4062.JPG \d ", lines[2]) and lines[-1] == "0"
    assert (tmp_path / "dist" / "rpi5" / "manifest.json").is_file() and (tmp_path / "runs" / "demo" / "model.pt").is_file()
