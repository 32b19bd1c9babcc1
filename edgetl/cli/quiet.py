"""Third-party noise off by default in both CLIs (torch-free); `--debug` shows all of it.

What an export printed before this, ahead of edgetl's own lines (litert-torch, ai-edge-litert,
torch 2.14 on this machine):
  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 00:00:1796500290.339939   18817 port.cc:153] oneDNN custom operations are on. ...
  W1205 19:51:31.303000 18817 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is ... deprecated ...
  I0000 00:00:1796500297.730302   18817 flatbuffer_export.cc:4410] Estimated count of arithmetic ops: ...
  INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
  INFO Serializing model...

Three layers, because the noise comes from three places:
- Environment variables, set before any of those libraries is imported: TF_CPP_MIN_LOG_LEVEL
  silences TensorFlow's own logging (the arithmetic-ops line), GRPC_VERBOSITY and
  GLOG_minloglevel their libraries', TORCH_LOGS=-torch torch's internal loggers (the _pytree
  line). TF_ENABLE_ONEDNN_OPTS is left alone: it switches kernels, not just messages.
- Python: warnings are all third-party (edgetl reports through logging, never `warnings`),
  so they are ignored; log records of other libraries below ERROR are dropped by
  `ThirdPartyFilter` on the CLI's handler.
- Native stderr: absl's C++ logging (the oneDNN line, the InitializeLog banner) ignores those
  variables, and LiteRT's XNNPACK line is printed with fprintf. `native_stderr_filtered`
  points file descriptor 2 at a pipe read by a small child process that drops those lines and
  passes every other one through (a C++ error, a crash message). A child process, not a
  thread: a library that writes more than a pipe's 64 KB while holding the GIL would block a
  thread reader forever; the child also outlives a killed CLI long enough to pass on its
  last words. Python's own `sys.stderr` (edgetl's log, tables, errors) keeps the real stderr.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from contextlib import contextmanager

__all__ = ["NOISE", "ThirdPartyFilter", "debug_requested", "is_noise", "native_stderr_filtered", "quiet_libraries"]

ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
    "TORCH_LOGS": "-torch",
}

# Native stderr lines dropped unless --debug. absl/glog lines start with a severity letter:
# only I(nfo) and W(arning) go; E(rror) and F(atal) pass.
NOISE = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] .*",  # absl before InitializeLog: "I0000 00:00:<epoch s>"
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
    r"INFO: Initialized TensorFlow Lite runtime\.",
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \[[IW]:onnxruntime:.*",
)
_NOISE = re.compile("|".join(f"(?:{p})" for p in NOISE))

# The child process that filters native stderr: stdlib only, started with -I -S (no site,
# no user paths: ~15 ms, overlapped with the CLI's own start). It ignores Ctrl-C (the CLI
# handles it) and ends when the last writer of the pipe closes it.
_FILTER = f"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
noise = re.compile({_NOISE.pattern!r}.encode())
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not noise.fullmatch(line.rstrip(b"\\r\\n")):
        out.write(line)
        out.flush()
"""


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when the command line asks for --debug (or EDGETL_DEBUG=1): then nothing is hidden."""
    return "--debug" in (sys.argv if argv is None else argv) or os.environ.get("EDGETL_DEBUG") == "1"


def is_noise(line: str) -> bool:
    """Whether a native stderr line is known third-party chatter (see NOISE)."""
    return bool(_NOISE.fullmatch(line.rstrip("\r\n")))


class ThirdPartyFilter(logging.Filter):
    """Passes every edgetl record, and other libraries' records from ERROR up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "edgetl" or record.name.startswith("edgetl.") or record.levelno >= logging.ERROR


def quiet_libraries() -> None:
    """Set the environment and warning filters; call before torch, TensorFlow or LiteRT is
    imported (`edgetl.cli.common.run_group` does, before it runs the command: importing the
    CLIs imports none of them). A variable the user set is kept."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.simplefilter("ignore")


@contextmanager
def native_stderr_filtered(enabled: bool = True):
    """Within the block, native writes to file descriptor 2 pass through the noise filter.

    Args:
        enabled: False (--debug) leaves stderr as it is.

    Yields:
        Nothing; `sys.stderr` is bound to the real stderr for the block, so Python output
        (logging, rich, click) is never filtered or delayed.
    """
    if not enabled or sys.stderr is None:
        yield
        return
    sys.stderr.flush()
    opened: list[int] = []
    try:
        real = os.dup(2)
        opened.append(real)
        read, write = os.pipe()
        opened += [read, write]
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER], stdin=read, stdout=real,
                                 stderr=subprocess.DEVNULL, close_fds=True)
    except (OSError, ValueError):  # no pipe, no process to spare, no interpreter path: noisy beats broken
        for fd in opened:
            os.close(fd)
        yield
        return
    os.close(read)
    previous = sys.stderr
    sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, encoding=previous.encoding, errors=previous.errors)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes our end of the pipe: the filter sees EOF once children let go too
        os.close(real)
        sys.stderr = previous  # the real-stderr stream stays open: a log handler may still hold it
        try:
            child.wait(timeout=2)  # its last lines out before the process ends
        except subprocess.TimeoutExpired:
            pass  # a child process still holds the pipe; the filter ends with it
