"""Progress of long work, reported through a callback instead of drawn by the library.

Library code says what it is doing (`with track("embedding train images", n) as t: t.advance(k)`);
whoever runs it decides how that shows: the CLIs install a rich progress bar
(edgetl/cli/common.py), a notebook or CI script passes its own callback to the public API
(`edgetl.finetune(..., progress=cb)`), and with none installed the start and end go to
`logging` at DEBUG.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

log = logging.getLogger("edgetl")

# callback(description, done, total); called at the start (done=0), as work advances, and at the end.
ProgressCallback = Callable[[str, int, int], None]

_callback: ContextVar[ProgressCallback | None] = ContextVar("edgetl_progress", default=None)


@contextmanager
def reporting(callback: ProgressCallback | None) -> Iterator[None]:
    """Send the progress of everything run inside the block to `callback` (None: keep the current one)."""
    if callback is None:
        yield
        return
    token = _callback.set(callback)
    try:
        yield
    finally:
        _callback.reset(token)


class Task:
    def __init__(self, description: str, total: int):
        self.description, self.total, self.done = description, int(total), 0
        self._cb = _callback.get()
        self._t0 = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += int(n)
        if self._cb:
            self._cb(self.description, self.done, self.total)


@contextmanager
def track(description: str, total: int) -> Iterator[Task]:
    """Report a unit of work of `total` steps."""
    task = Task(description, total)
    if task._cb:
        task._cb(description, 0, task.total)
    else:
        log.debug("%s: %d", description, total)
    try:
        yield task
    finally:
        if task._cb and task.done < task.total:
            task._cb(description, task.total, task.total)  # close the bar even when stopped early
        log.debug("%s: done in %.1f s", description, time.perf_counter() - task._t0)
