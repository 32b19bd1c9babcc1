"""Crash-safe file writes (torch-free): temp file, fsync, atomic rename, fsync the directory;
staged folders swapped into place whole."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("edgetl")

STAGE_MARK = ".edgetl-staging"  # a file inside every staging folder: what makes it safe to delete
STALE_AFTER_S = 3600  # a staging folder untouched this long belongs to a dead writer


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Either the old content or the new content is at `path`, never a mix, even after SIGKILL."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600; a head written on the device by root must stay readable by the
        # service user that runs predict, so files get ordinary permissions under the umask.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_permissions(root: Path) -> None:
    """Folders 0755 and files 0644 under the umask: mkdtemp makes 0700, which a device's
    service user could not read after the folder is copied there."""
    mask = _umask()
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)


def exchange_dirs(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = renameat2(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE)
    return rc == 0


def replace_dir(new: Path, dest: Path) -> None:
    """Move the complete folder `new` to `dest` (same filesystem) and delete what was there.

    With renameat2 `dest` names the old or the new folder at every instant; without it
    (other kernels, some filesystems) two renames leave a window of microseconds where
    `dest` is absent. The caller has checked that the old content may go.
    """
    if dest.is_dir() and any(dest.iterdir()):
        if exchange_dirs(new, dest):
            old = new  # the exchange left the old folder under the staging name
        else:
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            try:
                new.rename(dest)
            except BaseException:
                old.rename(dest)
                raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(dest)  # rename(2) replaces a missing or empty folder in one step
    fsync_dir(dest.parent)


def clean_stale_staging(parent: Path, name: str) -> None:
    """Remove staging folders of `name` that a killed writer left in `parent`."""
    now = time.time()
    prefix = f".{name}."  # not a glob: an out name may hold '[' or '*'. Export and finetune stage here.
    for path in parent.iterdir():
        if not path.name.startswith(prefix):
            continue
        try:
            if path.is_dir() and (path / STAGE_MARK).is_file() and now - path.stat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed '%s', left by an interrupted export or finetune", path)
        except OSError:
            continue


@contextmanager
def staged_replace(out: Path, kind: str = "run", before_swap: Callable[[], None] | None = None) -> Iterator[Path]:
    """Write a folder whole or not at all: yields a fresh staging folder beside `out`; when the
    block ends normally its files are synced to disk and the folder replaces `out` in one swap
    (`replace_dir`), after `before_swap()` (a last check of the destination). On any error,
    or a kill (STAGE_MARK lets the next writer delete it), `out` is untouched.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out.parent, out.name)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    try:
        (stage / STAGE_MARK).touch()
        yield stage
        (stage / STAGE_MARK).unlink()
        ordinary_permissions(stage)
        for path in stage.rglob("*"):  # on disk before the swap: a power cut cannot swap in empty files
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(stage)
        if before_swap is not None:
            before_swap()
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
