"""The stage cache of `edgetl build`: every stage's output stored under the sha256 of its inputs.

    CACHE/build/<stage>/<key[:2]>/<key>/   stage.json (written last) + the stage's files

A stage whose folder holds a stage.json is done and is reused; anything else under a key is
an interrupted write and is rebuilt. Entries are written to a staging folder and renamed
into place, so a killed build never leaves a half-written entry that looks complete.

The data digest hashes file contents, not modification times: a CI checkout or cache
restore gives every file a new mtime, which would miss the cache on every job. Hashing is
cheap next to any stage: 91 ms for hymenoptera (398 files, 47 MB) and 73 ms for the sign
digits (2062 files, 24 MB) on this 2-vCPU host, page cache warm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgetl.core.fsutil import atomic_write_json, sha256_file

log = logging.getLogger("edgetl")

STAGE_FILE = "stage.json"


def default_cache_root() -> Path:
    """`$EDGETL_CACHE/build`, else `~/.cache/edgetl/build`: beside the embedding cache, so a CI
    job that caches ~/.cache/edgetl keeps both."""
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl")) / "build"


def key_of(inputs: Any) -> str:
    """sha256 of a JSON-able description of a stage's inputs (canonical: sorted keys)."""
    text = json.dumps(inputs, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def folder_digest(root: Path) -> str:
    """sha256 over every file under `root`: relative name and content (hidden files skipped)."""
    h = hashlib.sha256()
    root = Path(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\t{sha256_file(path)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class StageCache:
    """Stage outputs keyed by content hash (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def load(self, stage: str, key: str) -> dict | None:
        """The stage.json of a finished entry, or None (missing, interrupted or unreadable)."""
        path = self.entry(stage, key) / STAGE_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("key") == key else None

    def stage_dir(self, stage: str, key: str) -> Path:
        """A fresh staging folder beside the entry, to write the stage's files into."""
        final = self.entry(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=final.parent))

    def commit(self, stage: str, key: str, staged: Path, record: dict) -> Path:
        """Write `record` as staged/stage.json and move `staged` into place; returns the entry.

        A concurrent build that committed the same key first wins: both computed the same
        inputs, and the entry it wrote is complete.
        """
        final = self.entry(stage, key)
        atomic_write_json(staged / STAGE_FILE, {**record, "key": key, "stage": stage})
        if final.exists():
            if self.load(stage, key) is not None:
                shutil.rmtree(staged, ignore_errors=True)
                return final
            shutil.rmtree(final, ignore_errors=True)  # an interrupted entry of an older layout
        try:
            staged.rename(final)
        except OSError:
            if self.load(stage, key) is None:
                raise
            shutil.rmtree(staged, ignore_errors=True)
        return final

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)
