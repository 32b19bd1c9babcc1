"""Evaluate a bundle on labelled images with the device runtime (torch-free).

The same function scores the artifact right after export on the host, in `edgetl evaluate`
and in `edgetl-device evaluate` on the board, so the numbers are comparable by construction.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edgetl.bundle import DEFAULT_TASK
from edgetl.core.metrics import classification_metrics
from edgetl.core.progress import track
from edgetl.core.scan import class_folders, scan_classes
from edgetl.errors import EdgetlError
from edgetl.runtime.predictor import Predictor

log = logging.getLogger("edgetl")


def labelled_images(data_dir: str | Path, labels: Sequence[str]) -> tuple[list[Path], list[int], int]:
    """(paths, class indices, skipped count) for DATA/<label>/* (or DATA/val/<label>/*).

    Class folders must be among the bundle's labels; a label without a folder is fine (the
    metrics show it with support 0).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise EdgetlError(f"data folder '{root}' does not exist; pass a folder of <class>/ sub-folders")
    if not {p.name for p in class_folders(root)} & set(labels) and (root / "val").is_dir():
        log.info("'%s' has train/ and val/; evaluating on '%s'", root, root / "val")
        root = root / "val"
    scan = scan_classes(root, labels)
    if not scan.items:
        raise EdgetlError(f"no readable images under '{root}'")
    return [p for p, _ in scan.items], [y for _, y in scan.items], len(scan.skipped)


def embed_paths(predictor: Predictor, paths: Sequence, batch_size: int = 16,
                description: str = "embedding") -> tuple[np.ndarray, float]:
    """Embeddings [N, D] of image files and the seconds spent in the backend (not decoding)."""
    chunks, infer_s = [], 0.0
    with track(description, len(paths)) as task:
        for i in range(0, len(paths), batch_size):
            batch = predictor.prepare(paths[i:i + batch_size])
            t0 = time.perf_counter()
            chunks.append(predictor.embed(batch))
            infer_s += time.perf_counter() - t0
            task.advance(len(batch))
    dim = predictor.backbone.embedding_dim
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), infer_s


def metrics_from_embeddings(predictor: Predictor, embeddings: np.ndarray, y_true: Sequence[int],
                            infer_s: float) -> dict:
    """Metrics JSON (top1, balanced_accuracy, n, per_class, confusion) plus mean latency."""
    y_pred = np.argmax(predictor.logits(embeddings), axis=1)
    metrics = classification_metrics(y_true, y_pred, predictor.labels)
    metrics["latency_ms"] = {"inference_mean": infer_s * 1e3 / max(1, len(y_true)),
                             "threads": predictor.backend.threads}
    return metrics


def evaluate_items(predictor: Predictor, paths: Sequence, y_true: Sequence[int], description: str = "evaluating") -> dict:
    embeddings, infer_s = embed_paths(predictor, paths, description=description)
    return metrics_from_embeddings(predictor, embeddings, y_true, infer_s)


def evaluate_folder(bundle_dir: str | Path, data_dir: str | Path, threads: int | None = None,
                    task: str = DEFAULT_TASK) -> dict:
    """Score a bundle on DATA/<class>/ images with the device runtime.

    Args:
        bundle_dir: the bundle folder.
        data_dir: class folders named after the task's labels (or a folder with val/).
        threads: inference threads (default: the target's).
        task: which head of a multi-task bundle to score (DATA's folders are its labels).

    Returns:
        The metrics JSON: top1, balanced_accuracy, n, per_class, confusion, latency_ms, and
        the bundle's target, precision and backend.

    Raises:
        BundleError, EdgetlError: an untrusted bundle, a missing folder, unknown classes.
    """
    predictor = Predictor.open(bundle_dir, threads=threads, task=task)
    paths, y, skipped = labelled_images(data_dir, predictor.labels)
    metrics = evaluate_items(predictor, paths, y)
    m = predictor.manifest
    metrics.update({
        "bundle": str(bundle_dir),
        "data": str(data_dir),
        "target": m.target_name,
        "precision": m.precision,
        "backend": m.backend,
        "task": task,
        "head_version": predictor.head_version,
        "skipped": skipped,
    })
    return metrics
