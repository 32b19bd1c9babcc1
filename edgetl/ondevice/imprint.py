"""Weight imprinting (as in Coral's on-device imprinting): a new class from a few images.

The new row is the normalised mean of the images' normalised embeddings, scaled to the
existing rows' mean norm so its logits live on the same scale. The bias puts the new logit
of the example images halfway between their best old logit and their imprinted score: the
class wins on images like its examples by a margin, without claiming images the old
classes already explain. The other rows are not touched.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.ondevice import guardrail
from edgetl.ondevice.bundle import open_bundle
from edgetl.ondevice.embedcache import embed_files
from edgetl.ondevice.localdata import MIN_IMAGES, collect_images, data_digest
from edgetl.ondevice.store import Head

log = logging.getLogger("edgetl")


def imprint(head: Head, emb: np.ndarray, label: str) -> Head:
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    direction = unit.mean(axis=0)
    direction /= max(float(np.linalg.norm(direction)), 1e-12)
    row = direction * float(np.linalg.norm(head.weight, axis=1).mean())
    imprinted = emb @ row
    best_old = head.logits(emb).max(axis=1)
    bias = float(np.mean((best_old - imprinted) / 2.0))
    return Head(np.vstack([head.weight, row]).astype(np.float32), np.append(head.bias, bias).astype(np.float32),
                head.labels + (label,))


def add_class(bundle_dir: Path, label: str, images: list[Path], *, min_images: int = MIN_IMAGES,
              tolerance: float = guardrail.DEFAULT_TOLERANCE, force: bool = False) -> dict:
    """Imprint `label` from `images` and activate it if the guardrail allows. Returns a summary."""
    label = label.strip()
    if not label:
        raise EdgetlError("the class NAME is empty; pass a name such as 'screw'")
    bundle = open_bundle(bundle_dir)
    paths = collect_images(images)
    if len(paths) < min_images:
        raise EdgetlError(f"class '{label}' has {len(paths)} usable image(s); add-class needs at least "
                          f"{min_images} (add images or lower --min-images)")
    with bundle.store.writer(bundle.factory) as writer:
        parent, old = bundle.current()
        if label in old.labels:
            raise EdgetlError(f"class '{label}' is already in the active head (version {parent}); "
                              "use `edgetl-device retrain` to refine an existing class")
        emb, digests = embed_files(bundle.dir, bundle.manifest, paths, bundle.embedder)
        t0 = time.perf_counter()
        new = imprint(old, emb, label)
        seconds = time.perf_counter() - t0
        verdict = guardrail.check(old, new, {"reference": bundle.reference()}, tolerance)
        support = guardrail.accuracy(new, emb, [label] * len(emb))
        metrics = {"images": len(paths), "support_accuracy": support, "fit_seconds": seconds,
                   "guardrail": verdict.to_dict()}
        activate = guardrail.enforce(verdict, force)
        summary = {"action": "add-class", "label": label, "parent": parent, "metrics": metrics,
                   "activated": activate, "forced": force and not verdict.passed}
        if not activate:
            summary["version"] = None
            return summary
        metrics["forced"] = summary["forced"]
        summary["version"] = writer.add(new, parent=parent, source=f"add-class {label}",
                                        data_digest=data_digest(digests, [label] * len(digests)),
                                        metrics=metrics, activate=True)
    return summary
