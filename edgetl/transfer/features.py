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
from edgetl.transfer.distributed import Context


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl"))


class EmbeddingCache:
    """Embeddings on disk under CACHE/embeddings/<backbone digest + preprocessing>/<file sha256>.npy.

    `backbone` is a zero-argument callable returning the module, called only when some
    image is not cached yet (building it is the slow part of a warm run).
    """

    def __init__(self, backbone_digest: str, backbone: Callable[[], torch.nn.Module], preprocess: Preprocess,
                 cache_dir: str | Path | None = None, about: dict | None = None, dist: Context = Context()):
        key = hashlib.sha256((backbone_digest + json.dumps(preprocess.to_dict(), sort_keys=True)).encode())
        self.dir = Path(cache_dir or default_cache_dir()) / "embeddings" / key.hexdigest()[:24]
        self.backbone = backbone
        self.preprocess = preprocess
        self.about = about or {}  # written to info.json so `edgetl cache` can say what a folder holds
        # Under torchrun every rank embeds a share and only rank 0 writes: one writer per
        # cache folder, and none of the other ranks' files in it.
        self.dist = dist
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
        """[N, D] float32 embeddings of `paths`, computing only what the cache lacks.

        Under torchrun the images some rank lacks are split across ranks in contiguous shares
        and gathered back in order, so every rank returns the same array.
        """
        if self.dist.rank0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.about and not (self.dir / "info.json").is_file():
                atomic_write_json(self.dir / "info.json", self.about)
        digests = [self.file_digest(p) for p in paths]
        out: list[np.ndarray | None] = [None] * len(paths)
        for i, d in enumerate(digests):
            f = self.dir / f"{d}.npy"
            if f.is_file():
                try:
                    out[i] = np.load(f, allow_pickle=False)
                except (OSError, ValueError):
                    pass  # a torn cache entry is recomputed
        # Each node may have its own cache: what any rank lacks is computed for all.
        todo = np.flatnonzero(self.dist.union(np.array([e is None for e in out], dtype=bool)))
        mine = todo[self.dist.shard(len(todo))]
        if len(mine):
            backbone = channels_last(self.backbone().to(self.dist.device).eval())
            with track(f"{label} ({len(paths) - len(todo)} cached)", len(mine)) as task, torch.inference_mode():
                for part in chunks(len(mine)):
                    chunk = mine[part]
                    x = as_input(torch.from_numpy(self.preprocess.batch([paths[i] for i in chunk])))
                    emb = backbone(x.to(self.dist.device)).cpu().numpy().astype(np.float32)
                    for i, e in zip(chunk, emb):
                        out[i] = e
                        if self.dist.rank0:
                            self._store(digests[i], e)
                    task.advance(len(chunk))
        if self.dist.is_distributed and len(todo):
            own = self.dist.shard(len(todo))
            rows = np.stack([out[i] for i in mine]) if len(mine) else np.zeros((0, 0), np.float32)
            for k, (i, e) in enumerate(zip(todo, self.dist.gather_rows(rows))):
                out[i] = e
                if self.dist.rank0 and not own.start <= k < own.stop:
                    self._store(digests[i], e)  # the other ranks' shares
        return np.stack(out)

    def _store(self, digest: str, embedding: np.ndarray) -> None:
        tmp = self.dir / f".{digest}.{os.getpid()}.npy"
        np.save(tmp, embedding)
        tmp.replace(self.dir / f"{digest}.npy")
