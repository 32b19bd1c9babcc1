"""Embeddings and images of a run for adaptation, through the fine-tuning embedding cache.

A linear run's backbone is the pretrained one, so its training images' embeddings are
already in the cache `edgetl finetune` filled (same key: the backbone state's digest and
the preprocessing): the source statistics then cost no forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from edgetl.core.images import scan_images
from edgetl.errors import EdgetlError
from edgetl.model import Run as LoadedRun
from edgetl.transfer.features import EmbeddingCache
from edgetl.transfer.pretrained import state_digest


def embedding_cache(backbone: nn.Module, loaded: LoadedRun, cache_dir: str | Path | None) -> EmbeddingCache:
    """The cache of `backbone`'s embeddings (keyed by its weights and statistics)."""
    return EmbeddingCache(state_digest(backbone.state_dict()), lambda: backbone, loaded.preprocess, cache_dir,
                          about={"backbone": loaded.spec.name, "weights": loaded.weights_origin,
                                 "preprocess": loaded.preprocess.to_dict(), "adapted": True})


def run_record(run_dir: Path) -> dict:
    """The run's metrics.json (its `data` record names the training-side files)."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgetlError(f"'{path}' is unreadable ({exc}); re-run finetune") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("data"), dict) \
            or not metrics["data"].get("train_files"):
        raise EdgetlError(f"'{path}' records no training files (the source statistics come from them); "
                          "re-run `edgetl finetune` with this version")
    return metrics


def target_images(folder: str | Path) -> list[Path]:
    """The unlabeled target images under `folder` (recursive; class folders, if any, are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgetlError(f"target images '{folder}' is not a folder; pass a folder of field images")
    paths, skipped = scan_images(folder)
    if len(paths) < MIN_TARGET_IMAGES:
        raise EdgetlError(f"'{folder}' holds {len(paths)} readable image(s); adaptation needs at least "
                          f"{MIN_TARGET_IMAGES} unlabeled field images to estimate their statistics")
    return paths


# Fewest target images to estimate per-dimension statistics from: a floor against a typo'd
# folder, not a recommendation (docs/benchmarks.md uses 200 to 1400).
MIN_TARGET_IMAGES = 20
