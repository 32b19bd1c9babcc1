"""Local images for adaptation: class folders or loose files, bad files skipped by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.core.images import IMAGE_SUFFIXES, BadImage, Skipped, load_rgb, report_skipped, scan_images
from edgetl.core.scan import scan_classes as _scan

MIN_IMAGES = 5


def collect_images(items: list[Path]) -> list[Path]:
    """Files and folders (recursive) -> decodable images; the rest are reported and skipped."""
    good: list[Path] = []
    skipped: list[Skipped] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            g, s = scan_images(item)
            good += g
            skipped += s
        elif not item.exists():
            raise EdgetlError(f"'{item}' does not exist; pass image files or folders")
        elif not item.is_file():
            skipped.append(Skipped(item, "is not a regular file"))
        elif item.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(Skipped(item, f"has extension '{item.suffix}', not an image type"))
        else:
            try:
                load_rgb(item, min_side=32)
                good.append(item)
            except BadImage as exc:
                skipped.append(Skipped(item, exc.reason))
    report_skipped(skipped, len(good) + len(skipped))
    return good


def scan_classes(root: Path, min_images: int) -> dict[str, list[Path]]:
    """`root/<label>/...` -> {label: images} by the one scanner finetune uses (edgetl.core.scan);
    needs two classes, each with `min_images`."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise EdgetlError(f"'{root}' is a file; retrain takes a folder with one sub-folder per class")
    classes = {label: paths for label, paths in _scan(root, loose_files="skip").by_label().items() if paths}
    if len(classes) < 2:
        found = f"only the class folder '{next(iter(classes))}'" if classes else "no class folder with images"
        raise EdgetlError(f"data folder '{root}' has {found}; retrain needs at least two classes "
                          "(to add one class from a few images use `edgetl-device add-class`)")
    small = {label: len(paths) for label, paths in classes.items() if len(paths) < min_images}
    if small:
        shown = ", ".join(f"'{root / label}' has {n}" for label, n in sorted(small.items()))
        raise EdgetlError(f"{shown} usable image(s); each class needs at least {min_images} "
                          "(add images or lower min_images)")
    return dict(sorted(classes.items()))


def data_digest(digests: list[str], labels: list[str]) -> str:
    """Identifies the training data by content and labels, whatever the file names."""
    h = hashlib.sha256()
    for d, lab in sorted(zip(digests, labels)):
        h.update(f"{d}\t{lab}\n".encode())
    return h.hexdigest()


def stratified_holdout(labels: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices; every class keeps at least one image on each side."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train, held = [], []
    for label in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(labels_arr == label))
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        held += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.array(sorted(train)), np.array(sorted(held))
