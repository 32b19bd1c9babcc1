"""The classification head: embedding [N, D] -> logits [N, C] as one float32 matmul."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.bundle import BundleError
from edgetl.ondevice.store import HeadStore

HEAD_FILE = "head.npz"


def load_head(bundle_dir: str | Path, manifest: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(weight [C, D], bias [C], labels) of the head in use: the active version of the device's
    head store (`edgetl-device retrain/add-class/rollback`) when it has one, else the factory head."""
    store = HeadStore(bundle_dir)
    if store.exists():
        _, head = store.load_active()
        return head.weight, head.bias, list(head.labels)
    return load_factory_head(bundle_dir, manifest)


def load_factory_head(bundle_dir: str | Path, manifest: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(weight [C, D], bias [C], labels) of the head the bundle was exported with.

    `allow_pickle=False`: a head file is data; loading one must never run code.
    """
    path = Path(bundle_dir) / manifest.get("head", HEAD_FILE)
    try:
        with np.load(path, allow_pickle=False) as npz:
            weight = np.asarray(npz["weight"], dtype=np.float32)
            bias = np.asarray(npz["bias"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"head '{path}' is unreadable ({exc}); re-export the bundle") from None
    labels = list(manifest["labels"])
    labels_file = Path(bundle_dir) / "labels.txt"
    if "labels.txt" in manifest.get("files", {}) and labels_file.read_text(encoding="utf-8").splitlines() != labels:
        # Only reachable when the manifest was edited and its own digest recomputed.
        raise BundleError(f"'{Path(bundle_dir) / 'manifest.json'}' lists labels {labels} but the verified "
                          f"'{labels_file}' differs; the manifest was edited: re-export the bundle")
    dim = int(manifest["model"]["embedding_dim"])
    if weight.shape != (len(labels), dim) or bias.shape != (len(labels),):
        raise BundleError(f"head '{path}' has weight {weight.shape} and bias {bias.shape}; expected "
                          f"({len(labels)}, {dim}) and ({len(labels)},) for {len(labels)} labels; re-export the bundle")
    return weight, bias, labels
