"""`Predictor`: open a bundle, preprocess images exactly as in validation, run the backbone
on the bundle's backend, apply the head. numpy + Pillow + one backend; no torch."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from edgetl.bundle import BundleError, load_manifest
from edgetl.ondevice.store import HeadStore
from edgetl.runtime.backends import Backend, open_backend
from edgetl.runtime.head import load_head
from edgetl.runtime.preprocess import ImageLike, Preprocess


@dataclass
class Prediction:
    label: str
    index: int
    score: float  # softmax probability of `label`
    top_k: list[tuple[str, float]]
    source: str
    timing_ms: dict = field(default_factory=dict)  # per image: preprocess, inference

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top_k"] = [{"label": lab, "score": s} for lab, s in self.top_k]
        return d


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _as_list(images) -> list:
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    return list(images)


class Predictor:
    def __init__(self, bundle_dir: Path, manifest: dict, backend: Backend):
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.backend = backend
        self.preprocess = Preprocess.from_dict(manifest["preprocess"])
        self._heads = HeadStore(bundle_dir)
        self._head_key = self._heads.state_key()
        self.weight, self.bias, self.labels = load_head(bundle_dir, manifest)
        self._input_shape = tuple(int(v) for v in manifest["model"]["input"]["shape"][1:])

    @classmethod
    def open(cls, bundle_dir: str | Path, threads: int | None = None, verify: bool = True) -> "Predictor":
        """Load a bundle; `verify` checks every file's sha256 first (seconds on a Pi; keep it on
        unless the caller verified already). `threads` defaults to the target's."""
        bundle_dir = Path(bundle_dir)
        manifest = load_manifest(bundle_dir, verify=verify)
        if "model" not in manifest:
            raise BundleError(f"'{bundle_dir / 'manifest.json'}' lacks 'model'; re-export the bundle")
        target = manifest.get("target")
        threads = threads or (target.get("threads") if isinstance(target, dict) else None) or os.cpu_count()
        backend = open_backend(manifest["backend"], bundle_dir / manifest["model"]["file"], manifest["model"], threads)
        return cls(bundle_dir, manifest, backend)

    def prepare(self, items: Sequence) -> np.ndarray:
        arrays = []
        for item in items:
            if isinstance(item, np.ndarray) and item.dtype == np.float32 and item.shape == self._input_shape:
                arrays.append(item)  # already preprocessed by the caller
            else:
                arrays.append(self.preprocess.batch([item])[0])
        return np.stack(arrays)

    def embed(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16) -> np.ndarray:
        """Embeddings [N, D] (float32) of images: paths, PIL images, uint8 HWC arrays, or
        float32 arrays already preprocessed in the model's layout (a batch [N, ...] too)."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.float32:
            return self.backend.run(images)
        items = _as_list(images)
        if not items:
            return np.zeros((0, int(self.manifest["model"]["embedding_dim"])), np.float32)
        return np.concatenate([self.backend.run(self.prepare(items[i:i + batch_size]))
                               for i in range(0, len(items), batch_size)])

    def _follow_head_store(self) -> None:
        """A retrain, add-class or rollback takes effect on the next call: one stat() per batch
        notices the head index being replaced, so no process restart is needed."""
        key = self._heads.state_key()
        if key != self._head_key:
            self.weight, self.bias, self.labels = load_head(self.bundle_dir, self.manifest)
            self._head_key = key

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        self._follow_head_store()
        return embeddings @ self.weight.T + self.bias

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 3, batch_size: int = 16) -> list[Prediction]:
        items = _as_list(images)
        out: list[Prediction] = []
        self._follow_head_store()
        k = max(1, min(top_k, len(self.labels)))
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            t0 = time.perf_counter()
            batch = self.prepare(chunk)
            t1 = time.perf_counter()
            probs = softmax(self.logits(self.backend.run(batch)))
            t2 = time.perf_counter()
            timing = {"preprocess": (t1 - t0) * 1e3 / len(chunk), "inference": (t2 - t1) * 1e3 / len(chunk)}
            for j, p in enumerate(probs):
                order = np.argsort(-p)[:k]
                src = chunk[j]
                name = str(src) if isinstance(src, (str, Path)) else f"<image {start + j}>"
                out.append(Prediction(self.labels[order[0]], int(order[0]), float(p[order[0]]),
                                      [(self.labels[i], float(p[i])) for i in order], name, dict(timing)))
        return out
