"""Embeddings of local images, cached by file content so a retrain re-embeds only new files.

The cache (`BUNDLE/cache/embeddings.npz`) is tied to the backbone that produced it: a
re-exported bundle with another model starts a fresh cache instead of mixing spaces.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from edgetl.bundle import Bundle
from edgetl.core.fsutil import atomic_write_bytes, sha256_file
from edgetl.core.progress import track

log = logging.getLogger("edgetl")

CACHE = Path("cache") / "embeddings.npz"
BATCH = 16
SAVE_EVERY = 16  # batches


def backbone_id(bundle: Bundle) -> str:
    m = bundle.manifest
    blob = json.dumps({"model": m.files[m.model_file], "preprocess": m.preprocess}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class EmbeddingCache:
    def __init__(self, bundle: Bundle):
        self.path = bundle.dir / CACHE
        self.backbone = backbone_id(bundle)
        self.rows: dict[str, np.ndarray] = {}
        self.dirty = False
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    if str(z["backbone"]) == self.backbone:
                        emb = np.asarray(z["embeddings"], np.float32)
                        digests = [str(d) for d in z["digests"]]
                        if emb.ndim != 2 or len(emb) != len(digests) or emb.shape[1] != bundle.manifest.embedding_dim:
                            raise ValueError(f"embeddings {emb.shape} for {len(digests)} digests")
                        self.rows = dict(zip(digests, emb))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                # Everything here can be recomputed: a damaged cache costs time, never the command.
                log.warning("embedding cache '%s' is damaged (%s); rebuilding it", self.path, exc)
                self.dirty = True

    def get(self, digest: str) -> np.ndarray | None:
        return self.rows.get(digest)

    def put(self, digest: str, emb: np.ndarray) -> None:
        self.rows[digest] = np.asarray(emb, np.float32)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        if not self.rows:
            self.path.unlink(missing_ok=True)
            self.dirty = False
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        digests = list(self.rows)
        buf = io.BytesIO()
        np.savez(buf, backbone=np.array(self.backbone), digests=np.array(digests, dtype=np.str_),
                 embeddings=np.stack([self.rows[d] for d in digests]).astype(np.float32))
        atomic_write_bytes(self.path, buf.getvalue())
        self.dirty = False


def embed_files(bundle: Bundle, paths: list[Path], embedder) -> tuple[np.ndarray, list[str]]:
    """Embeddings [N, D] and sha256 digests of `paths`; only cache misses reach `embedder`.

    `embedder()` returns an object with `.embed(paths) -> float32 [n, D]`; it is created only
    when something is missing, so a fully cached retrain never loads the model.
    """
    cache = EmbeddingCache(bundle)
    digests = [sha256_file(p) for p in paths]
    missing = sorted({d: p for d, p in zip(digests, paths) if cache.get(d) is None}.items())
    if missing:
        model = embedder()
        with track("embedding", len(missing)) as task:
            for i in range(0, len(missing), BATCH):
                chunk = missing[i:i + BATCH]
                for (d, _), emb in zip(chunk, model.embed([p for _, p in chunk])):
                    cache.put(d, emb)
                task.advance(len(chunk))
                if (i // BATCH) % SAVE_EVERY == SAVE_EVERY - 1:
                    cache.save()  # an interrupted run on a slow board keeps what it embedded
        cache.save()
    log.info("%d images: %d embedded, %d from the cache", len(paths), len(missing), len(paths) - len(missing))
    return np.stack([cache.get(d) for d in digests]), digests
