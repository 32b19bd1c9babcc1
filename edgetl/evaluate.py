"""Evaluate a training checkpoint (host, torch) on any folder of class sub-folders."""

from __future__ import annotations

import json
from pathlib import Path

from edgetl.data import scan_class_folders
from edgetl.core.metrics import classification_metrics
from edgetl.model import load_run


def evaluate_run_on_folder(run_dir: str | Path, data: str | Path, out: str | Path | None = None) -> dict:
    from edgetl.transfer.train import predict_logits

    run = load_run(run_dir)
    data = Path(data)
    folder = data / "val" if (data / "val").is_dir() else data
    items, _, skipped = scan_class_folders(folder, run.labels)
    logits = predict_logits(run.model, items, run.preprocess)
    metrics = classification_metrics([c for _, c in items], logits.argmax(1), run.labels)
    metrics["skipped"] = [{"path": str(s.path), "reason": s.reason} for s in skipped]
    if out:
        Path(out).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return metrics
