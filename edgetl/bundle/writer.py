"""`BundleWriter`: stage a bundle beside its destination, then swap it into place.

What it will and will not overwrite (docs/reliability.md):
- an empty or missing folder: written;
- an earlier edgetl bundle (an edgetl manifest.json, and nothing but the files it lists and
  what a device adds: heads/, cache/, engines/): replaced, unless its head store holds
  versions beyond the factory head v0, which the field trained and only the user may discard
  (refused, naming the fix);
- anything else that is not empty (a run folder, user files, a bundle holding user files, a
  web app's manifest.json): refused, nothing touched.

The swap exchanges the staged folder and the old bundle in one `renameat2(RENAME_EXCHANGE)`
on Linux, so `out` always names a complete bundle; where that call is missing (other
kernels, some filesystems) it falls back to two renames with a window of microseconds
where `out` is absent. Staging folders a killed export left behind are removed by the next
writer into the same parent folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from edgetl.bundle.manifest import MANIFEST, READABLE_SCHEMAS, SCHEMA_VERSION, BundleError, Manifest
from edgetl.core.fsutil import (STAGE_MARK, atomic_write_json, clean_stale_staging, fsync_dir,
                                 ordinary_permissions, replace_dir, sha256_file)

log = logging.getLogger("edgetl")

def head_versions(bundle_dir: Path) -> int:
    """How many head versions beyond the factory head v0 the store in `bundle_dir` holds."""
    count = 0
    for index in (bundle_dir / "heads").rglob("index.json") if (bundle_dir / "heads").is_dir() else []:
        try:
            body = json.loads(index.read_text(encoding="utf-8"))
            versions = body.get("versions") if isinstance(body, dict) else None
        except (OSError, ValueError):
            versions = None
        if not isinstance(versions, list):
            count += 1  # unreadable: treat as precious
            continue
        count += sum(1 for v in versions if not (isinstance(v, dict) and v.get("version") == 0))
    return count


# What a device adds to a bundle folder; all of it is the bundle's (the head store is
# checked on its own, the embedding cache and TensorRT engines are recomputed).
DEVICE_OWNED = ("heads", "cache", "engines")


def _bundle_entries(out: Path) -> set[str] | None:
    """The top-level names an edgetl bundle in `out` may hold, or None if `out` holds no
    edgetl manifest (a web app's manifest.json is not one)."""
    try:
        body = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("schema") not in READABLE_SCHEMAS \
            or not isinstance(body.get("files"), dict) or not isinstance(body.get("model"), dict):
        return None
    listed = {Path(str(name)).parts[0] for name in body["files"] if Path(str(name)).parts}
    return {MANIFEST, *DEVICE_OWNED, *listed}


def check_destination(out: Path) -> None:
    """Refuse to write over anything the user did not ask to lose (see the module docstring).

    Raises:
        BundleError: `out` is a file, a non-empty folder that is not a bundle, a bundle
            holding files it does not list, or a bundle whose head store holds field-trained
            versions.
    """
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise BundleError(f"'{out}' exists and is not a folder; pass another out folder")
    present = {p.name for p in out.iterdir()}
    if not present:
        return
    allowed = _bundle_entries(out) if MANIFEST in present else None
    if allowed is None:
        why = f"no {MANIFEST}" if MANIFEST not in present else f"its {MANIFEST} is not an edgetl manifest"
        raise BundleError(f"'{out}' is not empty and not an edgetl bundle ({why}); refusing to replace it. "
                          "Pass an empty or new folder as out")
    foreign = sorted(present - allowed)
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise BundleError(f"'{out}' is an edgetl bundle that also holds {shown}, which the bundle does not list; "
                          "refusing to replace it. Move those away, or pass another folder as out")
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
        ordinary_permissions(self.stage)
        fsync_dir(self.stage)
        check_destination(self.out)  # again: a device may have retrained while we exported
        replace_dir(self.stage, self.out)
        return manifest
