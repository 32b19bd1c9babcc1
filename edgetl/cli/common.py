"""What both CLIs share (torch-free): logging through rich, progress bars for the library's
progress callback, option types that refuse NaN, one-line errors, exit codes."""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback

import math
from contextlib import contextmanager

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edgetl.cli.quiet import ThirdPartyFilter, debug_requested, native_stderr_filtered, quiet_libraries
from edgetl.core.progress import reporting
from edgetl.errors import EdgetlError

__all__ = ["FiniteFloat", "check_writable", "escape", "json_text", "one_line", "progress_bars", "run_group",
           "setup_logging", "stderr", "stdout"]

stderr = Console(stderr=True)
# Piped or in a CI log, rich assumes 80 columns and wraps wide tables cell by cell; a log
# has no width, so tables there get 120 unless COLUMNS says otherwise.
stdout = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)


def one_line(text) -> str:
    """`text` on one line: line breaks and other unprintable characters (a file name may hold
    any) are shown as escapes, so an error is always the last line of stderr, whole."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in str(text))


def json_text(obj) -> str:
    """JSON for stdout, readable as UTF-8: non-ASCII text as is, unless a file name in another
    encoding (a surrogate escape) is in it; then every non-ASCII character is \\u-escaped,
    which json.loads and os.fsencode turn back into the original name."""
    import json

    text = json.dumps(obj, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, indent=2, ensure_ascii=True)
    return text


class FiniteFloat(click.ParamType):
    """A float option in [lo, hi]; 'nan' and 'inf' are refused (NaN compares false with
    everything, so a NaN tolerance would silently switch a check off)."""

    name = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.lo is not None and number < self.lo) or (self.hi is not None and number > self.hi):
            self.fail(f"{number:g} is not in the range {self.lo:g} to {self.hi:g}", param, ctx)
        return number


def check_writable(out) -> None:
    """Fail before a long run, not after it, when its output file cannot be written."""
    if out is None:
        return
    from pathlib import Path

    folder = Path(out).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if Path(out).is_dir():
        raise EdgetlError(f"'{out}' is a folder; pass a file name for the output")
    if not folder.is_dir():
        raise EdgetlError(f"cannot write '{out}': '{folder}' is a file, not a folder; pass another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EdgetlError(f"cannot write '{out}': '{folder}' is not writable; pass another output path")


@contextmanager
def progress_bars():
    """Draw the library's progress callback as rich bars on stderr (one per description); in a
    pipe or CI log, where bars would be noise, progress stays in the log lines."""
    if not stderr.is_terminal:
        yield
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr, transient=True) as bars:
        tasks: dict[str, int] = {}

        def callback(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bars.add_task(escape(description), total=total)
            bars.update(tasks[description], completed=done, total=total)
            if done >= total:
                bars.remove_task(tasks.pop(description))

        with reporting(callback):
            yield


def setup_logging(verbose: bool) -> None:
    # In a terminal rich formats; in a pipe or CI log each record stays one unwrapped line,
    # so a skipped file's name is never split across lines.
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(levelname)s %(message)s"
    if _quiet:  # other libraries' INFO/WARNING chatter, unless --debug (edgetl/cli/quiet.py)
        handler.addFilter(ThirdPartyFilter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler], force=True)


_quiet = False  # set by run_group: third-party noise is hidden (no --debug)


def run_group(group: click.Group) -> None:
    """Run a click group: user errors become one red line on stderr and exit 1.

    Tracebacks appear only with --debug (or EDGETL_DEBUG=1), because a field engineer
    needs the fix, not the stack.
    """
    global _quiet
    _quiet = not debug_requested()
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    if _quiet:
        quiet_libraries()  # before any command imports torch, TensorFlow or LiteRT
    try:
        with native_stderr_filtered(enabled=_quiet):
            _run(group, debug)
    finally:
        # The process ends here. Freezing keeps the interpreter's final garbage collection
        # from walking every object torch and matplotlib created: 0.2 s of each host
        # command's exit (`import torch` alone: 1.31 s, 1.12 s frozen). Outputs are written
        # and closed by now; memory is freed by the OS either way.
        gc.freeze()


def _run(group: click.Group, debug: bool) -> None:
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        stderr.print("aborted", style="red")
        sys.exit(130)
    except click.ClickException as exc:
        exc.message = one_line(exc.message)  # a path with a line break must not split the message
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except EdgetlError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # an unexpected failure is still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {one_line(exc)} (run again with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)
