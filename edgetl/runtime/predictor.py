"""`Predictor`: a bundle's backbone on its backend + the head in use. numpy + Pillow + one
backend; no torch."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgetl.backends import Backbone, _as_list
from edgetl.bundle import DEFAULT_TASK, Bundle, Head
from edgetl.core.preprocess import ImageLike


@dataclass
class Prediction:
    """One image's result: the top label, its softmax score, the top-k and per-image timing."""

    label: str
    index: int
    score: float  # softmax probability of `label`
    top_k: list[tuple[str, float]]
    source: str
    timing_ms: dict = field(default_factory=dict)  # per image: preprocess, inference
    head_version: int = 0
    # A multi-task bundle: every task's answer from the same embedding, name -> {label,
    # score, head_version} (the predictor's own task included); empty for a one-task bundle.
    tasks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top_k"] = [{"label": lab, "score": s} for lab, s in self.top_k]
        return d


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Classify images with a bundle, exactly as it was validated.

    Build one with `Predictor.open(path)`. The head follows the bundle's head store: a
    retrain, add-class or rollback takes effect on the next call, without a restart.
    """

    def __init__(self, bundle: Bundle, backbone: Backbone, head: Head | None = None, task: str = DEFAULT_TASK):
        self.bundle = bundle
        self.backbone = backbone
        self.task = task
        self._fixed_head = head is not None  # a head given by the caller (export scoring) is not followed
        self._store = bundle.heads(task)
        self._head_key = self._store.state_key()
        if head is None:
            self.head_version, head = bundle.active_head(task)
        else:
            self.head_version = 0
        self.head = head
        # The other tasks' heads, each following its own store; a caller-given head (export
        # scoring) is one head, alone.
        self._others = {} if self._fixed_head else \
            {t: _Followed(bundle, t) for t in bundle.tasks if t != task and len(bundle.tasks) > 1}

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, verify: bool = True,
             task: str = DEFAULT_TASK) -> "Predictor":
        """Open a bundle for prediction.

        Args:
            path: the bundle folder.
            threads: inference threads (default: the target's, else every core), 1..256.
            verify: check every file's sha256 first (keep it on unless the caller verified).
            task: which head to use in a multi-task bundle.

        Returns:
            The Predictor.

        Raises:
            BundleError: the bundle is missing, edited, truncated or tampered.
            EdgetlError: the backend is not installed, or `threads` is out of range.
        """
        bundle = Bundle.open(path, verify=verify)
        return cls(bundle, Backbone.open(bundle, threads), task=task)

    # -- what callers read -----------------------------------------------------------------
    @property
    def manifest(self):
        return self.bundle.manifest

    @property
    def labels(self) -> list[str]:
        self._follow_head_store()
        return list(self.head.labels)

    @property
    def backend(self):
        return self.backbone.backend

    @property
    def preprocess(self):
        return self.backbone.preprocess

    def prepare(self, items: Sequence) -> np.ndarray:
        return self.backbone.prepare(items)

    def embed(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16) -> np.ndarray:
        """Embeddings [N, D] (float32) of images: paths, PIL images, uint8 HWC arrays, or
        float32 arrays already preprocessed in the model's layout (a batch [N, ...] too)."""
        return self.backbone.embed(images, batch_size)

    def _follow_head_store(self) -> None:
        """One stat() per call notices the head index being replaced."""
        if self._fixed_head:
            return
        key = self._store.state_key()
        if key != self._head_key:
            self.head_version, self.head = self.bundle.active_head(self.task)
            self._head_key = key

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        self._follow_head_store()
        return self.head.logits(embeddings)

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 3, batch_size: int = 16) -> list[Prediction]:
        """Classify images.

        Args:
            images: one image or a list: paths, PIL images, uint8 HWC arrays.
            top_k: how many (label, score) pairs each result lists.
            batch_size: images per backend call.

        Returns:
            One Prediction per image, in order; from a multi-task bundle each also holds every
            task's label and score (`tasks`), all from the one embedding.

        Raises:
            BadImage: an image file is unreadable (its name and the reason in the message).
        """
        items = _as_list(images)
        out: list[Prediction] = []
        self._follow_head_store()
        labels = self.head.labels
        k = max(1, min(top_k, len(labels)))
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            t0 = time.perf_counter()
            batch = self.prepare(chunk)
            t1 = time.perf_counter()
            emb = self.backbone.embed(batch)
            probs = softmax(self.head.logits(emb))
            others = {t: (f.version, f.head.labels, softmax(f.head.logits(emb))) for t, f in self._current().items()}
            t2 = time.perf_counter()
            timing = {"preprocess": (t1 - t0) * 1e3 / len(chunk), "inference": (t2 - t1) * 1e3 / len(chunk)}
            for j, p in enumerate(probs):
                order = np.argsort(-p)[:k]
                src = chunk[j]
                name = str(src) if isinstance(src, (str, Path)) else f"<image {start + j}>"
                tasks = {}
                for t in self.bundle.tasks if others else ():  # in the bundle's order, default first
                    if t == self.task:
                        tasks[t] = {"label": labels[order[0]], "score": float(p[order[0]]),
                                    "head_version": self.head_version}
                    else:
                        version, t_labels, t_probs = others[t]
                        best = int(np.argmax(t_probs[j]))
                        tasks[t] = {"label": t_labels[best], "score": float(t_probs[j][best]), "head_version": version}
                out.append(Prediction(labels[order[0]], int(order[0]), float(p[order[0]]),
                                      [(labels[i], float(p[i])) for i in order], name, dict(timing),
                                      self.head_version, tasks))
        return out

    def _current(self) -> dict[str, "_Followed"]:
        for followed in self._others.values():
            followed.follow()
        return self._others


class _Followed:
    """Another task's head in use, reloaded when its store's index is replaced."""

    def __init__(self, bundle: Bundle, task: str):
        self.bundle, self.task = bundle, task
        self.store = bundle.heads(task)
        self.key = self.store.state_key()
        self.version, self.head = bundle.active_head(task)

    def follow(self) -> None:
        key = self.store.state_key()
        if key != self.key:
            self.version, self.head = self.bundle.active_head(self.task)
            self.key = key
