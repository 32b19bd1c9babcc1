"""`edgetl-device retrain`: refit the active head on local class folders, guarded and versioned.

New labels join the old ones (imprinted first, then refined); old classes missing from the
local data keep their rows, held near the current head by the anchored L2 term.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edgetl.backends import Backbone
from edgetl.bundle import DEFAULT_TASK, Bundle, Head
from edgetl.bundle.manifest import check_label
from edgetl.core.metrics import classification_metrics
from edgetl.ondevice import guardrail
from edgetl.ondevice.embedcache import embed_files
from edgetl.ondevice.fit import FitConfig, fit_softmax
from edgetl.ondevice.imprint import imprint
from edgetl.ondevice.localdata import MIN_IMAGES, data_digest, scan_classes, stratified_holdout
from edgetl.ondevice.results import AdaptResult

log = logging.getLogger("edgetl")

HOLDOUT = 0.2


def retrain(bundle: str | Path, data: str | Path, *, task: str = DEFAULT_TASK, min_images: int = MIN_IMAGES,
            seed: int = 0, tolerance: float = guardrail.DEFAULT_TOLERANCE, force: bool = False) -> AdaptResult:
    """Refit the active head on local class folders (old and new classes), guarded and versioned.

    Args:
        bundle: the bundle folder.
        data: `DATA/<class>/...` with at least two classes.
        task: the head to change in a multi-task bundle.
        min_images: fewest usable images each class needs.
        seed: seed of the held-out split (0 or more).
        tolerance: percentage points of old-class accuracy the new head may lose (0-100).
        force: activate the new head even if the guardrail refuses it.

    Returns:
        AdaptResult; `activated` is False when the guardrail refused (the old head stays).

    Raises:
        EdgetlError: an untrusted bundle or head store, too few classes or images, a bad number.
    """
    tolerance = guardrail.check_tolerance(tolerance)
    seed = guardrail.check_seed(seed)
    b = Bundle.open(bundle)
    store = b.heads(task)
    classes = scan_classes(Path(data), min_images)
    for label in classes:
        check_label(label, f"class folder '{Path(data) / label}'")
    paths = [p for ps in classes.values() for p in ps]
    names = [label for label, ps in classes.items() for _ in ps]
    with store.writer() as writer:
        parent, old = b.active_head(task)
        emb, digests = embed_files(b, paths, lambda: Backbone.open(b))
        t0 = time.perf_counter()
        train, held = stratified_holdout(names, HOLDOUT, seed)
        anchor = old
        new_labels = [label for label in classes if label not in old.labels]
        for label in new_labels:
            rows = [i for i in train if names[i] == label]
            anchor = imprint(anchor, emb[rows], label)
        index = {label: i for i, label in enumerate(anchor.labels)}
        y = [index[n] for n in names]
        y_train, y_held = [y[i] for i in train], [y[i] for i in held]
        result = fit_softmax(emb[train], y_train, emb[held], y_held, anchor.weight, anchor.bias, FitConfig())
        new = Head(result.weight, result.bias, anchor.labels)
        seconds = time.perf_counter() - t0
        held_names = [names[i] for i in held]
        verdict = guardrail.check(old, new, {"held-out": (emb[held], held_names), "reference": b.reference(task)},
                                  tolerance)
        held_metrics = classification_metrics(y_held, new.predict(emb[held]), list(new.labels))
        metrics = {"images": len(paths), "train": len(train), "held_out": len(held), "new_labels": new_labels,
                   "held_out_top1": held_metrics["top1"],
                   "held_out_balanced_accuracy": held_metrics["balanced_accuracy"],
                   "fit_seconds": round(seconds, 4), "steps": result.steps, "best_step": result.best_step,
                   "seed": seed, "guardrail": verdict.to_dict()}
        return guardrail.conclude("retrain", task, verdict, force, writer, new, parent=parent,
                                  source=f"retrain {Path(data).name}", data_digest=data_digest(digests, names),
                                  metrics=metrics)
