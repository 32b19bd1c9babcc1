"""A bundle opened for adaptation: manifest, head store, factory head, reference set, embedder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.bundle import load_manifest
from edgetl.errors import EdgetlError
from edgetl.ondevice.store import DEFAULT_TASK, Head, HeadStore
from edgetl.runtime.head import load_factory_head


@dataclass
class DeviceBundle:
    dir: Path
    manifest: dict
    store: HeadStore

    def factory(self) -> Head:
        weight, bias, labels = load_factory_head(self.dir, self.manifest)
        return Head(weight, bias, tuple(labels))

    def current(self) -> tuple[int, Head]:
        """The active head and its version (0, the factory head, before any change)."""
        return self.store.load_active() if self.store.exists() else (0, self.factory())

    def reference(self) -> tuple[np.ndarray, list[str]] | None:
        """The factory's reference embeddings and their labels, when the bundle carries them."""
        ref = self.manifest.get("reference")
        if not ref:
            return None
        path = self.dir / ref["file"]
        try:
            with np.load(path, allow_pickle=False) as z:
                emb = np.asarray(z["embeddings"], np.float32)
                raw = z["labels"]
        except (OSError, ValueError, KeyError) as exc:
            raise EdgetlError(f"reference set '{path}' is unreadable ({exc}); re-export the bundle") from None
        labels = self.manifest["labels"]
        names = [labels[int(i)] for i in raw] if raw.dtype.kind in "iu" else [str(s) for s in raw]
        if emb.ndim != 2 or len(names) != len(emb):
            raise EdgetlError(f"reference set '{path}' has {emb.shape} embeddings for {len(names)} labels; "
                              "re-export the bundle")
        return emb, names

    def embedder(self):
        from edgetl.runtime.predictor import Predictor  # loads the backend; only on a cache miss

        return Predictor.open(self.dir, verify=False)


def open_bundle(bundle_dir: str | Path, task: str = DEFAULT_TASK) -> DeviceBundle:
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir, verify=True)
    return DeviceBundle(bundle_dir, manifest, HeadStore(bundle_dir, task))
