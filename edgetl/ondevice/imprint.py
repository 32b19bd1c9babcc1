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

from edgetl.backends import Backbone
from edgetl.bundle import DEFAULT_TASK, Bundle, Head
from edgetl.bundle.manifest import check_label
from edgetl.errors import EdgetlError
from edgetl.ondevice import guardrail
from edgetl.ondevice.embedcache import embed_files
from edgetl.ondevice.localdata import MIN_IMAGES, collect_images, data_digest
from edgetl.ondevice.results import AdaptResult

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


def add_class(bundle: str | Path, label: str, images: list[str | Path], *, task: str = DEFAULT_TASK,
              min_images: int = MIN_IMAGES, tolerance: float = guardrail.DEFAULT_TOLERANCE,
              force: bool = False) -> AdaptResult:
    """Add class `label` to the active head from a few images, by weight imprinting.

    Args:
        bundle: the bundle folder.
        label: the new class name (one line of text, not already a class).
        images: image files and/or folders (searched recursively); bad files are skipped by name.
        task: the head to change in a multi-task bundle.
        min_images: fewest usable images the class needs.
        tolerance: percentage points of old-class accuracy the new head may lose (0-100).
        force: activate the new head even if the guardrail refuses it.

    Returns:
        AdaptResult; `activated` is False when the guardrail refused (the old head stays).

    Raises:
        EdgetlError: an untrusted bundle or head store, too few images, a bad label or number.
    """
    tolerance = guardrail.check_tolerance(tolerance)
    label = str(label).strip()
    if not label:
        raise EdgetlError("the class label is empty; pass a name such as 'screw'")
    check_label(label, "add-class", fix="pass a one-line UTF-8 name")
    b = Bundle.open(bundle)
    store = b.heads(task)
    paths = collect_images([Path(i) for i in images])
    if len(paths) < min_images:
        raise EdgetlError(f"class '{label}' has {len(paths)} usable image(s); add-class needs at least "
                          f"{min_images} (add images or lower min_images)")
    with store.writer() as writer:
        parent, old = b.active_head(task)
        if label in old.labels:
            raise EdgetlError(f"class '{label}' is already in the active head (version {parent}); "
                              "use retrain to refine an existing class")
        emb, digests = embed_files(b, paths, lambda: Backbone.open(b))
        t0 = time.perf_counter()
        new = imprint(old, emb, label)
        seconds = time.perf_counter() - t0
        verdict = guardrail.check(old, new, {"reference": b.reference(task)}, tolerance)
        support = guardrail.accuracy(new, emb, [label] * len(emb))
        metrics = {"images": len(paths), "support_accuracy": support, "fit_seconds": seconds,
                   "guardrail": verdict.to_dict()}
        return guardrail.conclude("add-class", task, verdict, force, writer, new, parent=parent,
                                  source=f"add-class {label}",
                                  data_digest=data_digest(digests, [label] * len(digests)), metrics=metrics,
                                  label=label)
