"""`Bundle`: a verified bundle folder and what it holds (torch-free).

Readers never touch manifest.json or the head files themselves: the runtime (Predictor),
the on-device adaptation and the TensorRT engine builder all go through `Bundle.open`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.bundle.heads import DEFAULT_TASK, Head, HeadStore
from edgetl.bundle.manifest import MANIFEST, BundleError, Manifest
from edgetl.core.fsutil import sha256_file
from edgetl.core.preprocess import Preprocess


def bundle_digest(bundle_dir: str | Path) -> str:
    """sha256 of a bundle's manifest.json (which lists every file's sha256), without opening
    it: what a build's device results and a TensorRT engine cache are keyed by."""
    return sha256_file(Path(bundle_dir) / MANIFEST)


@dataclass(frozen=True)
class Bundle:
    """An opened bundle. Build it with `Bundle.open`."""

    dir: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        """Open a bundle folder.

        Args:
            path: the bundle folder (holds manifest.json).
            verify: check every listed file's sha256 (seconds on a Pi for a large model; keep it
                on unless the caller verified already).

        Returns:
            The Bundle.

        Raises:
            BundleError: not a bundle, an unreadable or edited manifest, a missing, truncated or
                tampered file; the message names the file and the fix.
        """
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"bundle '{path}' is not a folder; pass the folder `edgetl export` wrote")
        manifest = Manifest.read(path)
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        if "labels.txt" in manifest.files:
            bundle._check_labels_file()
        return bundle

    def verify(self) -> None:
        """Check every listed file against its sha256 in the manifest."""
        for name, expected in self.manifest.files.items():
            path = self.dir / name
            if not path.is_file():
                raise BundleError(f"bundle file '{path}' is missing; re-copy or re-export the bundle")
            if sha256_file(path) != expected:
                raise BundleError(f"bundle file '{path}' does not match its sha256 in {MANIFEST} "
                                  "(tampered or truncated); re-copy or re-export the bundle")

    def _check_labels_file(self) -> None:
        # labels.txt is a convenience copy of the manifest's list; both are verified, so they
        # differ only when the manifest was edited and its own digest recomputed.
        text = (self.dir / "labels.txt").read_text(encoding="utf-8").splitlines()
        if text != list(self.labels):
            raise BundleError(f"'{self.dir / MANIFEST}' lists labels {list(self.labels)} but the verified "
                              f"'{self.dir / 'labels.txt'}' differs; the manifest was edited: re-export the bundle")

    # -- contents --------------------------------------------------------------------------
    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.manifest.preprocess)

    @property
    def model_path(self) -> Path:
        return self.dir / self.manifest.model_file

    @property
    def digest(self) -> str:
        """sha256 of manifest.json, which lists every file's sha256: one name for the whole bundle."""
        return bundle_digest(self.dir)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task's name: the default task (the class folders it was trained on) first,
        then the manifest's extra tasks, each a head on the same embedding."""
        return (DEFAULT_TASK, *(self.manifest.tasks or {}))

    def labels_of(self, task: str = DEFAULT_TASK) -> tuple[str, ...]:
        """The factory labels of `task`.

        Raises:
            BundleError: the bundle has no such task.
        """
        return self.labels if task == DEFAULT_TASK else tuple(self._task(task)["labels"])

    def _task(self, task: str) -> dict:
        tasks = self.manifest.tasks or {}
        if task not in tasks:
            raise BundleError(f"bundle '{self.dir}' has no task '{task}'; its tasks are {', '.join(self.tasks)}. "
                              "Pass one of those as --task")
        return tasks[task]

    def factory_head(self, task: str = DEFAULT_TASK) -> Head:
        """The head `task` was exported with (version 0 of its head store).

        Raises:
            BundleError: no such task, or its head file is unreadable or of the wrong shape.
        """
        file = self.manifest.head if task == DEFAULT_TASK else self._task(task)["head"]
        return Head.from_factory_file(self.dir / file, self.labels_of(task), self.manifest.embedding_dim)

    def binding(self, task: str = DEFAULT_TASK) -> dict:
        """What ties `task`'s head store to this bundle (recorded in its index.json)."""
        return {"backbone_sha256": self.manifest.files[self.manifest.model_file],
                "embedding_dim": self.manifest.embedding_dim, "factory_labels": list(self.labels_of(task))}

    def heads(self, task: str = DEFAULT_TASK, repair: bool = False) -> HeadStore:
        """The device-owned head store of `task` (it may not exist yet).

        Args:
            task: which head of a multi-task bundle.
            repair: accept an index whose active version is not listed (rollback repairs it).

        Raises:
            EdgetlError: the bundle has no such task; the store belongs to another bundle (by its
                recorded binding, or for a store written before bindings by a v0 that is not
                this task's factory head).
        """
        store = HeadStore(self.dir, task, self.binding(task), repair=repair, factory=lambda: self.factory_head(task))
        if store.exists():
            index = store.index()  # checks a recorded binding
            if "binding" not in index:
                v0 = store.load(0, index)
                if not v0.same_as(self.factory_head(task)):
                    raise BundleError(f"head store '{store.dir}' was not made from this bundle: its version 0 "
                                      f"differs from this bundle's factory head of task '{task}'; move "
                                      f"'{store.dir}' away to start from this bundle's factory head")
        return store

    def active_head(self, task: str = DEFAULT_TASK) -> tuple[int, Head]:
        """(version, head) in use: the head store's active version, else the factory head (0)."""
        store = self.heads(task)
        return store.load_active() if store.exists() else (0, self.factory_head(task))

    def require_reference(self, purpose: str, task: str = DEFAULT_TASK) -> tuple[np.ndarray, list[str]]:
        """The reference set, for an operation that cannot go on without one.

        Raises:
            BundleError: the bundle ships none (exported before reference sets existed), or
                none with `task`'s labels.
        """
        ref = self.reference(task)
        if ref is None:
            raise BundleError(f"bundle '{self.dir}' has no reference set (reference.npz), {purpose}; re-export it "
                              "with `edgetl export` (bundles from this version ship one)")
        return ref

    def reference(self, task: str = DEFAULT_TASK) -> tuple[np.ndarray, list[str]] | None:
        """The factory's reference embeddings and their `task` labels (the guardrail's set), if
        shipped; None also for an extra task the export could not score (no labels for it)."""
        ref = self.manifest.reference
        if not ref:
            return None
        path = self.dir / ref["file"]
        key = "labels" if task == DEFAULT_TASK else f"labels.{task}"
        labels = self.labels_of(task)
        try:
            with np.load(path, allow_pickle=False) as z:
                if key not in z.files and task != DEFAULT_TASK:
                    return None
                emb = np.asarray(z["embeddings"], np.float32)
                raw = z[key]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise BundleError(f"reference set '{path}' is unreadable ({exc}); re-export the bundle") from None
        names = [labels[int(i)] for i in raw] if raw.dtype.kind in "iu" else [str(s) for s in raw]
        if emb.ndim != 2 or len(names) != len(emb):
            raise BundleError(f"reference set '{path}' has {emb.shape} embeddings for {len(names)} labels; "
                              "re-export the bundle")
        return emb, names
