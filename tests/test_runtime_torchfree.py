"""The device side imports and runs with torch, timm and onnx unimportable (DESIGN.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import DEMO

BLOCKED = ("torch", "torchvision", "timm", "onnx", "litert_torch", "ai_edge_quantizer", "jax", "tensorflow")

SCRIPT = textwrap.dedent("""
    import sys

    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: the device runtime must not import it")
            return None

    sys.meta_path.insert(0, Block())

    import edgetl.bundle, edgetl.runtime, edgetl.runtime.predictor, edgetl.runtime.evaluate  # noqa: E401
    import edgetl.backends.tflite, edgetl.backends.onnxrt, edgetl.cli.device  # noqa: E401
    from edgetl.cli.device import cli

    sys.argv = ["edgetl-device", "predict", {bundle!r}, {image!r}, "--json"]
    try:
        cli.main(standalone_mode=False)
    finally:
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("LEAKED", leaked, file=sys.stderr)
""")


def test_device_runtime_runs_with_torch_blocked(int8_bundle):
    image = sorted(DEMO.glob("*/*"))[0]
    code = SCRIPT.format(blocked=BLOCKED, bundle=str(int8_bundle), image=str(image))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LEAKED []" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["predictions"][0]["source"] == str(image) and out["errors"] == []


def test_block_is_real():
    """The finder really blocks: importing torch under it fails."""
    code = SCRIPT.split("import edgetl.bundle")[0].format(blocked=BLOCKED) + "import torch\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr
