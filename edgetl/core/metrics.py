"""Classification metrics shared by the host and the device (numpy only).

Every metrics JSON in edgetl has the same keys: top1, balanced_accuracy, n, per_class,
confusion (rows = true class, columns = predicted), with accuracies in [0, 1].
"""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    support = confusion.sum(axis=1)
    recall = np.divide(np.diag(confusion), support, out=np.zeros(k), where=support > 0)
    present = support > 0
    return {
        "top1": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "n": int(len(y_true)),
        "per_class": {label: {"recall": float(recall[i]), "support": int(support[i])} for i, label in enumerate(labels)},
        "confusion": confusion.tolist(),
        "labels": list(labels),
    }


def balanced_accuracy(y_true, y_pred, num_classes: int) -> float:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    recalls = [float((y_pred[y_true == c] == c).mean()) for c in range(num_classes) if (y_true == c).any()]
    return float(np.mean(recalls)) if recalls else 0.0
