"""`BundleWriter`: stage a bundle beside its destination, then swap it into place.

What it will and will not overwrite (docs/reliability.md):
- an empty or missing folder: written;
- an earlier edgetl bundle (it has a valid-looking manifest.json): replaced, unless its head
  store holds versions beyond the factory head v0, which the field trained and only the
  user may discard (refused, naming the fix);
- anything else that is not empty (a run folder, user files): refused, nothing touched.

The swap exchanges the staged folder and the old bundle in one `renameat2(RENAME_EXCHANGE)`
on Linux, so `out` always names a complete bundle; where that call is missing (other
kernels, some filesystems) it falls back to two renames with a window of microseconds
where `out` is absent. Staging folders a killed export left behind are removed by the next
writer into the same parent folder.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from edgetl.bundle.manifest import MANIFEST, SCHEMA_VERSION, BundleError, Manifest
from edgetl.core.fsutil import atomic_write_json, fsync_dir, sha256_file

log = logging.getLogger("edgetl")

STAGE_MARK = ".edgetl-staging"  # a file inside every staging folder: what makes it safe to delete
STALE_AFTER_S = 3600  # a staging folder untouched this long belongs to a dead writer


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ordinary_permissions(root: Path) -> None:
    """Folders 0755 and files 0644 under the umask: mkdtemp makes 0700, which a device's
    service user could not read after the bundle is copied there."""
    mask = _umask()
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = renameat2(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE)
    return rc == 0


def clean_stale_staging(parent: Path, name: str) -> None:
    """Remove staging folders of `name` that a killed writer left in `parent`."""
    now = time.time()
    for path in parent.glob(f".{name}.*"):
        try:
            if path.is_dir() and (path / STAGE_MARK).is_file() and now - path.stat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed '%s', left by an interrupted export", path)
        except OSError:
            continue


def head_versions(bundle_dir: Path) -> int:
    """How many head versions beyond the factory head v0 the store in `bundle_dir` holds."""
    count = 0
    for index in (bundle_dir / "heads").rglob("index.json") if (bundle_dir / "heads").is_dir() else []:
        try:
            versions = json.loads(index.read_text(encoding="utf-8")).get("versions", [])
            count += sum(1 for v in versions if isinstance(v, dict) and v.get("version") != 0)
        except (OSError, ValueError, AttributeError):
            count += 1  # unreadable: treat as precious
    return count


def check_destination(out: Path) -> None:
    """Refuse to write over anything the user did not ask to lose (see the module docstring).

    Raises:
        BundleError: `out` is a file, a non-empty folder that is not a bundle, or a bundle
            whose head store holds field-trained versions.
    """
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise BundleError(f"'{out}' exists and is not a folder; pass another --out")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise BundleError(f"'{out}' is not empty and not an edgetl bundle (no {MANIFEST}); refusing to replace it. "
                          "Pass an empty or new folder as out")
    trained = head_versions(out)
    if trained:
        raise BundleError(f"'{out}' is a bundle whose head store holds {trained} version(s) trained on the device; "
                          f"replacing it would lose them. Export to another folder, or move '{out / 'heads'}' "
                          "away first if you mean to discard them")


class BundleWriter:
    """Collects a bundle's files in a staging folder and commits them with their sha256.

    Usage:
        with BundleWriter(out) as w:
            w.add_bytes("head.npz", data); w.add_file("backbone.tflite", path)
            w.commit(manifest)
    Leaving the block without `commit` (an exception, Ctrl-C) removes the staging folder and
    leaves `out` as it was.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        check_destination(self.out)
        clean_stale_staging(self.out.parent, self.out.name)
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.export-", dir=self.out.parent))
        (self.stage / STAGE_MARK).touch()
        self._files: list[str] = []

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.stage.exists():
            shutil.rmtree(self.stage, ignore_errors=True)

    def path(self, name: str) -> Path:
        """Where a bundle file is staged (for tools that write files themselves)."""
        p = self.stage / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add_file(self, name: str, src: str | Path) -> None:
        dst = self.path(name)
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        self._files.append(name)

    def add_bytes(self, name: str, data: bytes) -> None:
        self.path(name).write_bytes(data)
        self._files.append(name)

    def commit(self, manifest: Manifest) -> Manifest:
        """Digest the files, write the manifest, swap the bundle into place.

        Returns:
            The manifest as written (schema, files and digest filled in).
        """
        listed = set(self._files)
        for path in sorted(self.stage.rglob("*"), reverse=True):  # the bundle holds what the manifest lists
            rel = path.relative_to(self.stage).as_posix()
            if path.is_file() and rel not in listed and rel != STAGE_MARK:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        digests = {name: sha256_file(self.stage / name) for name in dict.fromkeys(self._files)}
        manifest = manifest.replace(schema=SCHEMA_VERSION, files=digests)
        body = manifest.to_json()
        Manifest.from_json(body, self.stage / MANIFEST)  # what a reader will accept
        (self.stage / STAGE_MARK).unlink()
        atomic_write_json(self.stage / MANIFEST, body)
        _ordinary_permissions(self.stage)
        fsync_dir(self.stage)
        check_destination(self.out)  # again: a device may have retrained while we exported
        if self.out.exists() and any(self.out.iterdir()):
            if not _exchange(self.stage, self.out):
                old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                self.out.rename(old)
                self.stage.rename(self.out)
                self.stage = old
            shutil.rmtree(self.stage, ignore_errors=True)  # now the old bundle
        else:
            if self.out.exists():
                self.out.rmdir()
            self.stage.rename(self.out)
        fsync_dir(self.out.parent)
        return manifest
