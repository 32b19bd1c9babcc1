"""The pretrained backbone behind a run, resolved once and kept on disk.

Resolving weights imports timm (about 2.5 s here: it pulls in torchvision and
torch._dynamo), loads the package checkpoint and remaps its keys. A linear probe whose
embeddings are all cached needs none of that: it needs the weights' digest (the embedding
cache key) and the timm-keyed state dict that goes into RUN/model.pt. Both are kept as
CACHE/backbones/<key>.pt, keyed by the architecture and the weights file's sha256, and the
timm module is built only when images must be embedded or the backbone trains.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from edgetl.backbones import BackboneSpec, create_architecture, create_backbone, locate_weights
from edgetl.transfer.features import default_cache_dir
from edgetl.core.fsutil import atomic_write_json, sha256_file

log = logging.getLogger("edgetl")

SNAPSHOT_FORMAT = "edgetl.backbone-snapshot/1"


def state_digest(state: dict) -> str:
    """sha256 over names and tensor bytes: what identifies a backbone's embeddings."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class PretrainedBackbone:
    """`digest` and `state_dict()` are available at once; `module()` builds timm on demand."""

    def __init__(self, spec: BackboneSpec, weights: str | None = "default", cache_dir: str | Path | None = None,
                 write_cache: bool = True):
        self.spec = spec
        path, self.origin = locate_weights(spec, weights)
        self._module: nn.Module | None = None
        self._state: dict | None = None
        # Random init and timm downloads have no local file to key on: always built.
        self._snapshot = None
        if path is not None:
            key = hashlib.sha256(f"{SNAPSHOT_FORMAT}|{spec.arch}|{sha256_file(path)}".encode()).hexdigest()[:24]
            self._snapshot = Path(cache_dir or default_cache_dir()) / "backbones" / f"{key}.pt"
        if not self._load_snapshot():
            with torch.random.fork_rng(devices=[]):  # see module()
                self._module, self.origin = create_backbone(spec.name, weights)
            self.digest = state_digest(self._module.state_dict())
            if write_cache:  # off on torchrun's ranks other than 0: one writer per cache
                self._save_snapshot()

    def _load_snapshot(self) -> bool:
        if self._snapshot is None or not self._snapshot.is_file():
            return False
        try:
            snap = torch.load(self._snapshot, map_location="cpu", weights_only=True)
            ok = snap.get("format") == SNAPSHOT_FORMAT and state_digest(snap["state"]) == snap["digest"]
        except Exception:  # a torn or foreign file is a cache miss, not an error
            ok = False
        if not ok:
            log.warning("backbone cache '%s' is unreadable or does not match its digest; rebuilding it", self._snapshot)
            return False
        self._state, self.digest = snap["state"], snap["digest"]
        return True

    def _save_snapshot(self) -> None:
        if self._snapshot is None:
            return
        self._snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._snapshot.with_name(f".{self._snapshot.name}.{os.getpid()}")
        torch.save({"format": SNAPSHOT_FORMAT, "digest": self.digest, "origin": self.origin,
                    "state": self._module.state_dict()}, tmp)
        tmp.replace(self._snapshot)
        # What `edgetl cache` prints, without loading the 14+ MB snapshot to find out.
        atomic_write_json(self._snapshot.with_suffix(".json"),
                          {"backbone": self.spec.name, "origin": self.origin, "digest": self.digest})

    def state_dict(self) -> dict:
        """The current weights: the trained module's once built, else the pretrained ones."""
        return self._module.state_dict() if self._module is not None else self._state

    def module(self) -> nn.Module:
        if self._module is None:
            # timm initialises weights randomly before ours overwrite them; forking the RNG keeps
            # that from shifting the seeded training that follows, which would make a run whose
            # backbone came from the cache differ from one that built it.
            with torch.random.fork_rng(devices=[]):
                self._module = create_architecture(self.spec.name)
            self._module.load_state_dict(self._state, strict=True)
        return self._module
