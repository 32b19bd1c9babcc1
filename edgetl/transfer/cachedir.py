"""What the host cache holds (embedding sets, resolved backbones), and clearing it.

Everything in it can be recomputed, so clearing is always safe; it only makes the next
linear probe over the same images slow again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from edgetl.transfer.features import default_cache_dir


@dataclass
class CacheEntry:
    kind: str  # "embeddings", "backbone" or "build" (one entry per `edgetl build` stage)
    path: Path
    what: str
    files: int
    bytes: int


CACHED = ("embeddings", "backbones", "build")  # `build` is edgetl.build.cache.default_cache_root()


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _describe_embeddings(folder: Path) -> str:
    try:
        info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
        return f"{info['backbone']} ({info['weights']})"
    except (OSError, ValueError, KeyError):
        return "unknown backbone (written before info.json existed)"


def _describe_backbone(path: Path) -> str:
    try:  # the sidecar finetune writes beside each snapshot
        return str(json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["origin"])
    except (OSError, ValueError, KeyError):
        pass
    try:  # snapshots written before the sidecar existed
        return str(torch.load(path, map_location="cpu", weights_only=True).get("origin", "unknown origin"))
    except Exception:  # a torn file: finetune rebuilds it
        return "unreadable (will be rebuilt)"


def cache_entries(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    root = Path(cache_dir or default_cache_dir())
    entries = []
    for folder in sorted((root / "embeddings").glob("*")):
        if folder.is_dir():
            entries.append(CacheEntry("embeddings", folder, _describe_embeddings(folder),
                                      len(list(folder.glob("*.npy"))), _bytes(folder)))
    for path in sorted((root / "backbones").glob("*.pt")):
        sidecar = path.with_suffix(".json")
        size = path.stat().st_size + (sidecar.stat().st_size if sidecar.is_file() else 0)
        entries.append(CacheEntry("backbone", path, _describe_backbone(path), 1, size))
    for folder in sorted((root / "build").glob("*")):  # edgetl.build.cache: build/<stage>/<xx>/<key>/
        if folder.is_dir():
            finished = [p for p in folder.glob("*/*") if p.is_dir() and not p.name.startswith(".")]
            entries.append(CacheEntry("build", folder, f"{folder.name} stage ({len(finished)} finished)",
                                      sum(1 for p in folder.rglob("*") if p.is_file()), _bytes(folder)))
    return entries


def clear_cache(cache_dir: str | Path | None = None) -> int:
    """Remove the embedding, backbone and build-stage caches; returns the bytes freed."""
    root = Path(cache_dir or default_cache_dir())
    freed = sum(_bytes(root / sub) for sub in CACHED if (root / sub).is_dir())
    for sub in CACHED:
        shutil.rmtree(root / sub, ignore_errors=True)
    return freed
