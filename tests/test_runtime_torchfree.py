"""The device side imports and runs with torch, timm and onnx unimportable (DESIGN.md): the
public facade (`import edgetl`, `edgetl.open_bundle`, `edgetl.Predictor`, `edgetl.ondevice`)
and the `edgetl-device` CLI. One way of blocking for every device test: tests/no_torch on
PYTHONPATH (tests/ondevice_support.py DEVICE_ENV)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import DEMO
from tests.ondevice_support import DEVICE_ENV

HEAVY = ("torch", "torchvision", "timm", "onnx", "litert_torch", "ai_edge_quantizer", "jax", "tensorflow")

FACADE = textwrap.dedent("""
    import json, sys
    import edgetl
    bundle = edgetl.open_bundle({bundle!r})
    prediction = edgetl.Predictor.open({bundle!r}).predict([{image!r}])[0]
    report = edgetl.ondevice.heads({bundle!r})
    leaked = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
    print(json.dumps({{"labels": list(bundle.labels), "label": prediction.label, "factory_only": report.factory_only,
                      "leaked": leaked}}))
""")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=DEVICE_ENV)


def test_public_api_on_the_device_imports_no_torch(int8_bundle):
    image = sorted(DEMO.glob("*/*"))[0]
    proc = run_blocked(FACADE.format(bundle=str(int8_bundle), image=str(image), heavy=HEAVY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["leaked"] == [] and out["factory_only"] is True
    assert out["label"] in out["labels"] and out["labels"] == sorted(p.name for p in DEMO.iterdir() if p.is_dir())


def test_device_cli_runs_with_torch_blocked(int8_bundle):
    image = sorted(DEMO.glob("*/*"))[0]
    code = ("import sys, json\nfrom edgetl.cli.device import cli\n"
            f"sys.argv = ['edgetl-device', 'predict', {str(int8_bundle)!r}, {str(image)!r}, '--json']\n"
            "try:\n    cli.main(standalone_mode=False)\nfinally:\n"
            f"    print('LEAKED', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), file=sys.stderr)\n")
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LEAKED []" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["predictions"][0]["source"] == str(image) and out["errors"] == []


def test_block_is_real():
    """The blocking really blocks: importing torch or onnx under it fails."""
    for name in ("torch", "timm", "onnx"):
        proc = run_blocked(f"import {name}")
        assert proc.returncode != 0 and "ImportError" in proc.stderr, name


def test_import_edgetl_alone_imports_nothing_heavy():
    proc = run_blocked("import sys, edgetl; edgetl.__version__; "
                       f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
