"""Versioned head store inside a bundle directory (numpy only, crash-safe).

Layout: `heads/index.json` and `heads/vNNNN.npz` for the default task, `heads/<task>/...`
for any other task of a multi-task bundle, so each task's head is versioned on its own.
Version 0 is a copy of the factory head.

Crash safety: a head file is written to a temp file, fsynced, renamed into place and its
directory fsynced; only then is the index rewritten the same way. A SIGKILL at any moment
leaves either the old index (and perhaps an orphan head file nobody lists) or the new one,
so a reader always opens at the last complete version. Writers hold an flock on
`heads/<task>/.lock` (released by the kernel when a writer dies) and remove orphans, which
no reader can be using because only the index makes a file visible.

Binding: the index records the bundle it belongs to (sha256 of the backbone file, embedding
width, the factory labels). A store copied from another bundle, or left behind when new
files were copied over an old bundle, is refused by name instead of used silently.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgetl.bundle.manifest import DEFAULT_TASK, TASK_NAME, BundleError
from edgetl.errors import EdgetlError
from edgetl.core.fsutil import atomic_write_bytes, atomic_write_json, fsync_dir, sha256_file

log = logging.getLogger("edgetl")

INDEX = "index.json"
INDEX_FORMAT = "edgetl.heads/1"
_HEAD_FILE = re.compile(r"^v(\d{4,})\.npz$")
_TEMP_FILE = re.compile(r"^\..+\.tmp$")  # what fsutil.atomic_write_bytes leaves behind on a kill


@dataclass(frozen=True)
class Head:
    """A linear head over the backbone's embedding: logits = emb @ weight.T + bias."""

    weight: np.ndarray  # float32 [C, D]
    bias: np.ndarray  # float32 [C]
    labels: tuple[str, ...]

    def __post_init__(self):
        w, b = self.weight, self.bias
        if w.ndim != 2 or b.shape != (w.shape[0],) or len(self.labels) != w.shape[0]:
            raise ValueError(f"head shapes disagree: weight {w.shape}, bias {b.shape}, {len(self.labels)} labels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"head labels are not unique: {list(self.labels)}")

    def logits(self, emb: np.ndarray) -> np.ndarray:
        return emb @ self.weight.T + self.bias

    def predict(self, emb: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(emb), axis=1)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, weight=self.weight.astype(np.float32), bias=self.bias.astype(np.float32),
                 labels=np.array(self.labels, dtype=np.str_))
        return buf.getvalue()

    @classmethod
    def from_factory_file(cls, path: Path, labels: tuple[str, ...], embedding_dim: int) -> "Head":
        """The head a bundle was exported with (`head.npz`: weight, bias; labels from the manifest).

        `allow_pickle=False`: a head file is data; loading one must never run code.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                weight = np.asarray(z["weight"], np.float32)
                bias = np.asarray(z["bias"], np.float32)
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise BundleError(f"head '{path}' is unreadable ({exc}); re-export the bundle") from None
        if weight.shape != (len(labels), embedding_dim) or bias.shape != (len(labels),):
            raise BundleError(f"head '{path}' has weight {weight.shape} and bias {bias.shape}; expected "
                              f"({len(labels)}, {embedding_dim}) and ({len(labels)},) for {len(labels)} labels; "
                              "re-export the bundle")
        return cls(weight, bias, tuple(labels))

    def same_as(self, other: "Head") -> bool:
        return self.labels == other.labels and self.weight.shape == other.weight.shape and \
            bool(np.array_equal(self.weight, other.weight)) and bool(np.array_equal(self.bias, other.bias))

    @classmethod
    def from_file(cls, path: Path) -> "Head":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(np.asarray(z["weight"], np.float32), np.asarray(z["bias"], np.float32),
                           tuple(str(s) for s in z["labels"]))
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise EdgetlError(f"head file '{path}' is unreadable ({exc}); roll back with "
                              "`edgetl-device rollback`") from None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def store_dir(bundle_dir: str | Path, task: str = DEFAULT_TASK) -> Path:
    if not TASK_NAME.match(task):
        raise EdgetlError(f"task name {task!r} must be 1 to 64 letters, digits, '_', '-' or '.', starting with a "
                          "letter or digit")
    root = Path(bundle_dir) / "heads"
    return root if task == DEFAULT_TASK else root / task


class HeadStore:
    """The versions of one task's head. Reading needs no lock; writing goes through `writer()`."""

    def __init__(self, bundle_dir: str | Path, task: str = DEFAULT_TASK, binding: dict | None = None,
                 repair: bool = False, factory: Callable[[], Head] | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.task = task
        self.dir = store_dir(bundle_dir, task)
        self.index_path = self.dir / INDEX
        self.binding = binding  # what the index must record (Bundle.heads() passes it)
        # rollback opens the store to repair it: an index whose `active` names no listed
        # version is then readable, so that `rollback VERSION` can point it at a listed one.
        self.repair = repair
        # The task's own factory head (Bundle.heads passes it): version 0 of a new store.
        self.factory = factory

    # -- reading ----------------------------------------------------------------------
    def exists(self) -> bool:
        return self.index_path.is_file()

    def index(self) -> dict:
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EdgetlError(f"'{self.dir}' holds no head store yet; the factory head is in use") from None
        except PermissionError:
            raise EdgetlError(f"cannot read the head index '{self.index_path}' (permission denied); run as the "
                              f"bundle's owner, or make '{self.dir}' readable to this user") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EdgetlError(f"head index '{self.index_path}' is corrupt ({exc}); delete '{self.dir}' to go "
                              "back to the factory head") from None
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
            raise EdgetlError(f"head index '{self.index_path}' is not an {INDEX_FORMAT} index; delete "
                              f"'{self.dir}' to go back to the factory head")
        self._check_index(index)
        return index

    def _check_index(self, index: dict) -> None:
        """Every inconsistency named, with the repair."""
        fix = f"restore '{self.dir}' from a backup, or move it away to start again from the factory head"
        versions = index.get("versions")
        if not isinstance(versions, list) or not versions:
            raise EdgetlError(f"head index '{self.index_path}' lists no versions; {fix}")
        seen = set()
        for i, e in enumerate(versions):
            if not isinstance(e, dict):
                raise EdgetlError(f"head index '{self.index_path}': entry {i} is a {type(e).__name__}, not an "
                                  f"object; {fix}")
            checks = {"version": type(e.get("version")) is int and e["version"] >= 0,
                      "file": isinstance(e.get("file"), str) and bool(_HEAD_FILE.match(e["file"])),
                      "sha256": isinstance(e.get("sha256"), str),
                      "labels": isinstance(e.get("labels"), list),
                      "parent": "parent" in e and (e["parent"] is None or type(e["parent"]) is int)}
            bad = [key for key, ok in checks.items() if not ok]
            if bad:
                raise EdgetlError(f"head index '{self.index_path}': entry {i} (version {e.get('version')!r}) lacks "
                                  f"a valid {', '.join(repr(k) for k in bad)}; {fix}")
            if e["version"] in seen:
                raise EdgetlError(f"head index '{self.index_path}' lists version {e['version']} twice; {fix}")
            seen.add(e["version"])
        active = index.get("active")
        if (type(active) is not int or active not in seen) and not self.repair:
            task = "" if self.task == DEFAULT_TASK else f" --task {self.task}"
            raise EdgetlError(f"head index '{self.index_path}' marks version {active!r} active, but it lists only "
                              f"{sorted(seen)}; `edgetl-device rollback '{self.bundle_dir}' {max(seen)}{task}` "
                              "makes a listed one active")
        recorded = index.get("binding")
        if self.binding and recorded and recorded != self.binding:
            theirs = recorded.get("backbone_sha256") if isinstance(recorded, dict) else None
            raise EdgetlError(f"head store '{self.dir}' belongs to another bundle (its index records backbone "
                              f"{str(theirs)[:12]}, this bundle's is "
                              f"{str(self.binding.get('backbone_sha256'))[:12]}); move '{self.dir}' away to start "
                              "from this bundle's factory head")

    def entry(self, version: int, index: dict | None = None) -> dict:
        index = index or self.index()
        for e in index["versions"]:
            if e["version"] == version:
                return e
        known = ", ".join(str(e["version"]) for e in index["versions"])
        raise EdgetlError(f"head version {version} is not in '{self.index_path}' (known: {known})")

    def active_version(self, index: dict | None = None) -> int:
        return int((index or self.index())["active"])

    def load(self, version: int, index: dict | None = None) -> Head:
        """Load one version, refusing a file whose sha256 differs from the index."""
        e = self.entry(version, index)
        path = self.dir / e["file"]
        if not path.is_file():
            raise EdgetlError(f"head file '{path}' (version {version}) is missing; roll back with "
                              "`edgetl-device rollback`")
        if sha256_file(path) != e["sha256"]:
            raise EdgetlError(f"head file '{path}' does not match its sha256 in '{self.index_path}' "
                              "(tampered or corrupt); refusing it. Roll back with `edgetl-device rollback`")
        head = Head.from_file(path)
        if list(head.labels) != e["labels"]:
            raise EdgetlError(f"head file '{path}' labels differ from '{self.index_path}'; refusing it")
        return head

    def load_active(self) -> tuple[int, Head]:
        index = self.index()
        version = self.active_version(index)
        return version, self.load(version, index)

    def damaged(self) -> dict[int, str]:
        """{version: problem} for every listed version whose file is missing, tampered or unreadable."""
        problems = {}
        index = self.index()
        for e in index["versions"]:
            try:
                self.load(e["version"], index)
            except EdgetlError as exc:
                problems[e["version"]] = str(exc)
        return problems

    def verify(self) -> list[str]:
        """Problems with any listed version (empty when every file is present and intact)."""
        return list(self.damaged().values())

    def state_key(self) -> tuple | None:
        """Changes whenever the index is replaced (atomic rename = new inode), for cheap reloads."""
        try:
            st = os.stat(self.index_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    # -- writing ----------------------------------------------------------------------
    @contextmanager
    def writer(self, factory: Callable[[], Head] | None = None):
        """Exclusive write access. Creates the store (version 0 = the factory head) and clears
        crash leftovers.

        Args:
            factory: makes the factory head, for a store opened on its own (`HeadStore(dir)`). A
                store from `Bundle.heads(task)` uses the factory head of its task, so a caller
                holding the bundle cannot seed one task's store with another task's head.

        Raises:
            EdgetlError: the store is not writable, another writer holds it, or no factory head is known.
        """
        make = self.factory or factory
        if make is None:
            raise EdgetlError(f"internal: no factory head for the new head store '{self.dir}'")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise EdgetlError(f"cannot write the head store '{self.dir}' (permission denied); run as the "
                              "bundle's owner or copy the bundle to a writable place") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EdgetlError(f"another edgetl-device command is changing '{self.dir}'; wait for it "
                                  "to finish") from None
            if not self.exists():
                self._create(make())
            self._clean_orphans()
            yield _Writer(self)
        finally:
            os.close(fd)  # closing releases the flock

    def _create(self, head: Head) -> None:
        expected = (self.binding or {}).get("factory_labels")
        if expected is not None and list(head.labels) != list(expected):
            raise EdgetlError(f"internal: version 0 of '{self.dir}' would have labels {list(head.labels)}, not the "
                              f"factory labels {list(expected)} of task '{self.task}'")
        entry = self._write_head(0, head, parent=None, source="factory", data_digest=None, metrics={})
        index = {"format": INDEX_FORMAT, "task": self.task, "active": 0, "versions": [entry]}
        if self.binding:
            index["binding"] = self.binding
        atomic_write_json(self.index_path, index)
        fsync_dir(self.dir.parent)

    def _write_head(self, version: int, head: Head, **info) -> dict:
        name = f"v{version:04d}.npz"
        atomic_write_bytes(self.dir / name, head.to_bytes())
        return {"version": version, "file": name, "sha256": sha256_file(self.dir / name),
                "created": utc_now(), "labels": list(head.labels), **info}

    def _clean_orphans(self) -> None:
        listed = {e["file"] for e in self.index()["versions"]}
        for path in self.dir.iterdir():
            if path.is_file() and (_TEMP_FILE.match(path.name) or
                                   (_HEAD_FILE.match(path.name) and path.name not in listed)):
                path.unlink()


class _Writer:
    """Mutations of a locked store; each one ends with one atomic index write."""

    def __init__(self, store: HeadStore):
        self.store = store

    def add(self, head: Head, *, parent: int, source: str, data_digest: str | None, metrics: dict,
            activate: bool) -> int:
        index = self.store.index()
        version = max(e["version"] for e in index["versions"]) + 1
        log.info("writing head version %d to '%s'", version, self.store.dir)
        entry = self.store._write_head(version, head, parent=parent, source=source,
                                       data_digest=data_digest, metrics=metrics)
        index["versions"].append(entry)
        if self.store.binding and "binding" not in index:  # a store written before binding existed
            index["binding"] = self.store.binding
        if activate:
            index["active"] = version
        atomic_write_json(self.store.index_path, index)
        return version

    def activate(self, version: int) -> None:
        index = self.store.index()
        self.store.load(version, index)  # never point the index at a missing or tampered file
        index["active"] = version
        atomic_write_json(self.store.index_path, index)
