"""Embed images once with a frozen backbone; cache by (backbone weights, preprocessing, file content).

The cache key covers everything that changes an embedding, so a second run over the same
images, or over a re-split of them, never recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgetl.core.progress import track
from edgetl.transfer.cpu import as_input, channels_last, chunks
from edgetl.core.fsutil import atomic_write_json, sha256_file
from edgetl.core.preprocess import Preprocess


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl"))


class EmbeddingCache:
    """Embeddings on disk under CACHE/embeddings/<backbone digest + preprocessing>/<file sha256>.npy.

    `backbone` is a zero-argument callable returning the module, called only when some
    image is not cached yet (building it is the slow part of a warm run).
    """

    def __init__(self, backbone_digest: str, backbone: Callable[[], torch.nn.Module], preprocess: Preprocess,
                 cache_dir: str | Path | None = None, about: dict | None = None):
        key = hashlib.sha256((backbone_digest + json.dumps(preprocess.to_dict(), sort_keys=True)).encode())
        self.dir = Path(cache_dir or default_cache_dir()) / "embeddings" / key.hexdigest()[:24]
        self.backbone = backbone
        self.preprocess = preprocess
        self.about = about or {}  # written to info.json so `edgetl cache` can say what a folder holds
        self._digests: dict[tuple, str] = {}

    def file_digest(self, path: Path) -> str:
        st = path.stat()  # memoised per (path, size, mtime): the scan and embed() both ask
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sha256_file(path)
        return self._digests[key]

    def contains(self, path: Path) -> bool:
        """True when `path`'s content was embedded before, so it is known to decode."""
        return (self.dir / f"{self.file_digest(path)}.npy").is_file()

    def embed(self, paths: list[Path], label: str = "embedding images") -> np.ndarray:
        """[N, D] float32 embeddings of `paths`, computing only what the cache lacks."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.about and not (self.dir / "info.json").is_file():
            atomic_write_json(self.dir / "info.json", self.about)
        digests = [self.file_digest(p) for p in paths]
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
            backbone = channels_last(self.backbone().eval())
            with track(f"{label} ({len(paths) - len(todo)} cached)", len(todo)) as task, torch.inference_mode():
                for part in chunks(len(todo)):
                    chunk = todo[part]
                    x = as_input(torch.from_numpy(self.preprocess.batch([paths[i] for i in chunk])))
                    emb = backbone(x).numpy().astype(np.float32)
                    for i, e in zip(chunk, emb):
                        out[i] = e
                        tmp = self.dir / f".{digests[i]}.{os.getpid()}.npy"
                        np.save(tmp, e)
                        tmp.replace(self.dir / f"{digests[i]}.npy")
                    task.advance(len(chunk))
        return np.stack(out)
