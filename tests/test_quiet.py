"""Quiet by default (issue 16): a CLI's stderr holds edgetl's lines only; --debug shows the
third-party chatter (absl, TensorFlow, torch, LiteRT, Python warnings) again."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from tests.conftest import EDGETL, run_cli

FORBIDDEN = ("absl", "oneDNN", "FutureWarning", "DeprecationWarning", "UserWarning", "WARNING: All log messages")

# A click group run the way both CLIs run theirs, whose command makes the noise an export made
# (native absl/LiteRT lines written to file descriptor 2, a Python warning, a library's INFO
# record) and the lines that must survive (a native error, edgetl's log, a library's ERROR).
NOISY_CLI = textwrap.dedent('''
    import logging, os, warnings
    import click
    from edgetl.cli.common import run_group, setup_logging

    @click.group()
    def cli():
        setup_logging(False)

    @cli.command()
    def noisy():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1796500290.339939   18817 port.cc:153] oneDNN custom operations are on.\\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
        os.write(2, b"E0000 00:00:1796500290.339939   18817 native.cc:1] a native error that matters\\n")
        warnings.warn("a third-party notice", UserWarning)
        logging.getLogger("ai_edge_quantizer").info("Serializing model...")
        logging.getLogger("onnxruntime").error("a library error that matters")
        logging.getLogger("edgetl").info("edgetl's own line")

    run_group(cli)
''')


def _noisy(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", NOISY_CLI, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines()


def test_third_party_noise_is_hidden_and_errors_are_not():
    lines = _noisy("noisy")
    assert not [line for line in lines if any(word in line for word in FORBIDDEN)], lines
    assert "Serializing model" not in "\n".join(lines) and "XNNPACK" not in "\n".join(lines)
    assert "INFO edgetl's own line" in lines and "ERROR a library error that matters" in lines
    assert any("a native error that matters" in line for line in lines)


def test_debug_shows_everything():
    text = "\n".join(_noisy("noisy", "--debug"))
    for expected in ("WARNING: All log messages", "oneDNN", "XNNPACK", "UserWarning: a third-party notice",
                     "INFO Serializing model...", "a native error that matters", "INFO edgetl's own line"):
        assert expected in text, (expected, text)


def test_export_stderr_holds_only_edgetl_lines(trained_run, tmp_path):
    """A real FP32 rpi5 export (litert-torch, ai-edge-litert, torch): before issue 16 its stderr
    began with absl's InitializeLog banner, the oneDNN notice, a torch _pytree deprecation and
    LiteRT's XNNPACK line."""
    proc = run_cli(EDGETL, "export", trained_run, "--target", "rpi5", "--precision", "fp32", "--out", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "export logs its stages"
    assert not [line for line in lines if any(word in line for word in FORBIDDEN)], lines
    # In a pipe edgetl logs one "LEVEL message" line per record; nothing else reaches stderr.
    assert all(re.match(r"(DEBUG|INFO|WARNING|ERROR) ", line) for line in lines), lines
