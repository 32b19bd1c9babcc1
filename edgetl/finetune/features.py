"""Embed images once with a frozen backbone; cache by (backbone weights, preprocessing, file content).

The cache key covers everything that changes an embedding, so a second run over the same
images, or over a re-split of them, never recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edgetl.clikit import stderr
from edgetl.fsutil import sha256_file
from edgetl.runtime.preprocess import Preprocess


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl"))


def model_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=stderr, transient=False)


class EmbeddingCache:
    def __init__(self, backbone: torch.nn.Module, preprocess: Preprocess, cache_dir: str | Path | None = None):
        key = hashlib.sha256((model_digest(backbone) + json.dumps(preprocess.to_dict(), sort_keys=True)).encode())
        self.dir = Path(cache_dir or default_cache_dir()) / "embeddings" / key.hexdigest()[:24]
        self.backbone = backbone
        self.preprocess = preprocess

    def embed(self, paths: list[Path], batch_size: int = 32, label: str = "embedding images") -> np.ndarray:
        """[N, D] float32 embeddings of `paths`, computing only what the cache lacks."""
        self.dir.mkdir(parents=True, exist_ok=True)
        digests = [sha256_file(p) for p in paths]
        out: list[np.ndarray | None] = [None] * len(paths)
        todo = []
        for i, d in enumerate(digests):
            f = self.dir / f"{d}.npy"
            if f.is_file():
                try:
                    out[i] = np.load(f, allow_pickle=False)
                    continue
                except (OSError, ValueError):
                    pass  # a torn cache entry is recomputed
            todo.append(i)
        if todo:
            self.backbone.eval()
            with progress() as bar, torch.inference_mode():
                task = bar.add_task(f"{label} ({len(paths) - len(todo)} cached)", total=len(todo))
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start:start + batch_size]
                    x = torch.from_numpy(self.preprocess.batch([paths[i] for i in chunk]))
                    emb = self.backbone(x).numpy().astype(np.float32)
                    for i, e in zip(chunk, emb):
                        out[i] = e
                        tmp = self.dir / f".{digests[i]}.{os.getpid()}.npy"
                        np.save(tmp, e)
                        tmp.replace(self.dir / f"{digests[i]}.npy")
                    bar.advance(task, len(chunk))
        return np.stack(out)
