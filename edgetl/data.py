"""Image folders: discovery, validated file lists, seeded stratified splits, torch datasets.

Two layouts are accepted:
  root/train/<class>/*, root/val/<class>/*   (the split is the user's)
  root/<class>/*                             (split here, stratified, seeded by --seed)

Fine-tuning then carves a selection split out of the training images (`carve_selection`):
early stopping and every keep/discard choice look at it, so the validation split is touched
only for the reported metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.core.images import Skipped
from edgetl.core.scan import scan_classes

log = logging.getLogger("edgetl")

IMBALANCE_RATIO = 3.0  # largest/smallest class size above which we warn
# Fraction of each class's training images held out as the selection split, and the fewest
# training images a class needs to give one: with 3, one goes to selection and two still train.
SELECTION_FRACTION = 0.15
SELECTION_MIN_CLASS_IMAGES = 3


@dataclass
class Split:
    root: Path
    labels: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    layout: str  # "train/val" or "class folders"
    val_split: float | None
    seed: int
    skipped: list[Skipped] = field(default_factory=list)
    # Held out of `train` for early stopping and keep/discard choices (`carve_selection`);
    # empty until carved, and in records written before selection splits existed.
    selection: list[tuple[Path, int]] = field(default_factory=list)
    selection_fraction: float | None = None

    def describe(self) -> dict:
        """What metrics.json records, so export and evaluation can rebuild the same split.

        Returns:
            root, layout, val_split, seed, labels, the files of each split relative to root
            (`train_files`: the images trained on; `selection_files`; `val_files`), the
            selection fraction and the skipped files.
        """
        rel = lambda items: [str(p.relative_to(self.root)) for p, _ in items]  # noqa: E731
        return {
            "root": str(self.root.resolve()),
            "layout": self.layout,
            "val_split": self.val_split,
            "seed": self.seed,
            "labels": self.labels,
            "train_files": rel(self.train),
            "selection_files": rel(self.selection),
            "selection_fraction": self.selection_fraction,
            "val_files": rel(self.val),
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
        }


def scan_class_folders(folder: Path, labels: list[str] | None = None, known_good=None
                       ) -> tuple[list[tuple[Path, int]], list[str], list[Skipped]]:
    """(path, class index) for every decodable image under folder/<class>/, sorted, by the
    one scanner the device uses too (edgetl.core.scan; `known_good` as in `scan_images`)."""
    scan = scan_classes(folder, labels, known_good=known_good)
    if not scan.items:
        raise EdgetlError(f"no readable images under '{folder}'")
    return sorted(scan.items), scan.labels, scan.skipped


def _stratified_split(items, val_split: float, seed: int):
    by_class: dict[int, list] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    rng = random.Random(seed)
    train, val = [], []
    for cls in sorted(by_class):
        group = sorted(by_class[cls])
        rng.shuffle(group)
        n_val = int(round(len(group) * val_split))
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)  # every class in both splits
        else:
            n_val = 0
            log.warning("class %d has one image: it is trained on but never validated, so its recall is not "
                        "measured; add images to that class", cls)
        val += group[:n_val]
        train += group[n_val:]
    return sorted(train), sorted(val)


def warn_imbalance(items, labels: list[str], where: str) -> None:
    counts = Counter(c for _, c in items)
    sizes = [counts.get(i, 0) for i in range(len(labels))]
    empty = [labels[i] for i, n in enumerate(sizes) if n == 0]
    if empty:
        raise EdgetlError(f"{where}: classes {empty} have no readable images")
    if max(sizes) > IMBALANCE_RATIO * min(sizes):
        big, small = labels[sizes.index(max(sizes))], labels[sizes.index(min(sizes))]
        log.warning("%s is imbalanced: '%s' has %d images, '%s' only %d; balanced accuracy is the metric to watch",
                    where, big, max(sizes), small, min(sizes))


def data_root(root: str | Path) -> Path:
    """The data folder, checked to exist (callers check first to fail before slow set-up)."""
    root = Path(root)
    if not root.is_dir():
        raise EdgetlError(f"data folder '{root}' does not exist; pass a folder of class sub-folders")
    return root


def load_split(root: str | Path, val_split: float = 0.2, seed: int = 0, known_good=None) -> Split:
    root = data_root(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, labels, skipped = scan_class_folders(root / "train", known_good=known_good)
        val, _, skipped_val = scan_class_folders(root / "val", labels, known_good)
        split = Split(root, labels, train, val, "train/val", None, seed, skipped + skipped_val)
    else:
        if not 0.0 < val_split < 1.0:
            raise EdgetlError(f"val_split (--val-split) {val_split} must be between 0 and 1 for a folder without train/ and val/")
        items, labels, skipped = scan_class_folders(root, known_good=known_good)
        train, val = _stratified_split(items, val_split, seed)
        split = Split(root, labels, train, val, "class folders", val_split, seed, skipped)
    if len(split.labels) < 2:
        raise EdgetlError(f"'{root}' has one class ({split.labels[0]}); a classifier needs at least two")
    warn_imbalance(split.train, split.labels, "training data")
    if not split.val:
        raise EdgetlError(f"'{root}': the validation split is empty; add images or raise val_split (--val-split)")
    return split


def carve_selection(split: Split, fraction: float = SELECTION_FRACTION) -> Split:
    """Hold a stratified, seeded selection split out of `split.train`.

    Per class, round(fraction x its training images) go to selection, at least one when the
    class has SELECTION_MIN_CLASS_IMAGES (3) or more and never so many that fewer than two
    stay in training. A class with 1 or 2 training images gives none: all of them are needed
    to learn it. It is then missing from the selection split's balanced accuracy (the mean
    recall over the classes present), and a warning names it. The draw is seeded by
    `split.seed` apart from the validation split's, so the two never move together.

    Args:
        split: a split from `load_split`, not yet carved.
        fraction: share of each class's training images held out, in (0, 1).

    Returns:
        A copy of `split` whose `train` no longer holds the `selection` images. `selection`
        is empty when no class has 3 training images; the caller then selects on `train`.

    Raises:
        EdgetlError: `fraction` is not in (0, 1), or `split` was carved already.
    """
    if not 0.0 < fraction < 1.0:
        raise EdgetlError(f"selection fraction {fraction} must be between 0 and 1 (exclusive)")
    if split.selection:
        raise EdgetlError("this split already has a selection split; carve it once")
    by_class: dict[int, list] = {}
    for item in split.train:
        by_class.setdefault(item[1], []).append(item)
    # A string seed hashes the same in every process (random.seed uses sha512 for str).
    rng = random.Random(f"{split.seed}:selection")
    train, selection, too_small = [], [], []
    for cls in sorted(by_class):
        group = sorted(by_class[cls])
        rng.shuffle(group)
        n = 0
        if len(group) >= SELECTION_MIN_CLASS_IMAGES:
            n = min(max(int(round(len(group) * fraction)), 1), len(group) - 2)
        else:
            too_small.append(split.labels[cls])
        selection += group[:n]
        train += group[n:]
    if too_small and selection:
        log.warning("classes %s have fewer than %d training images: none are held out for the selection split, "
                    "so early stopping does not watch them; add images to those classes",
                    too_small, SELECTION_MIN_CLASS_IMAGES)
    return dataclasses.replace(split, train=sorted(train), selection=sorted(selection), selection_fraction=fraction)


def split_from_record(record: dict) -> Split:
    """Rebuild the exact split a run was trained on from its metrics.json `data` record.

    Args:
        record: metrics.json's `data` (from `Split.describe`); `selection_files` may be absent.

    Returns:
        The split, its `selection` empty for a record without `selection_files`.

    Raises:
        EdgetlError: the validation images are no longer where the record says.
    """
    root = Path(record["root"])
    labels = list(record["labels"])
    def items(files):
        out = []
        for rel in files:
            path = root / rel
            out.append((path, labels.index(Path(rel).parent.name)))
        return out
    missing = [str(root / f) for f in record["val_files"] if not (root / f).is_file()]
    if missing:
        raise EdgetlError(f"the run's validation images are gone (e.g. '{missing[0]}'); pass the data folder explicitly")
    # Records written before selection splits existed have no selection_files: their
    # training files then hold every non-validation image, as they did.
    return Split(root, labels, items(record["train_files"]), items(record["val_files"]),
                 record["layout"], record.get("val_split"), int(record.get("seed", 0)),
                 selection=items(record.get("selection_files") or []),
                 selection_fraction=record.get("selection_fraction"))


# ---------------------------------------------------------------------------------------
# torch side (imported lazily: this module's scanning part is used by CLIs that may not train)
# ---------------------------------------------------------------------------------------

AUGMENTATIONS = ("none", "light", "strong")


def train_transform(preprocess, augment: str = "light"):
    """torchvision v2 augmentation ending in the same normalisation as `preprocess`."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    interp = InterpolationMode(preprocess.interpolation)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(preprocess.mean), list(preprocess.std))]
    if augment == "none":
        return None  # the caller uses the eval preprocessing
    if augment == "light":
        ops = [v2.RandomResizedCrop(preprocess.size, scale=(0.6, 1.0), interpolation=interp, antialias=True),
               v2.RandomHorizontalFlip(),
               v2.ColorJitter(0.2, 0.2, 0.2)]
    elif augment == "strong":
        ops = [v2.RandomResizedCrop(preprocess.size, scale=(0.3, 1.0), interpolation=interp, antialias=True),
               v2.RandomHorizontalFlip(),
               v2.RandAugment(num_ops=2, magnitude=9),
               v2.ColorJitter(0.3, 0.3, 0.3, 0.05)]
    else:
        raise EdgetlError(f"augment (--augment) '{augment}' is not one of {AUGMENTATIONS}")
    return v2.Compose(ops + tail)


class ImageDataset:
    """Map-style dataset for a torch DataLoader; files were validated by the scan, and
    decoding goes through `load_rgb` like everywhere else."""

    def __init__(self, items, preprocess, transform=None):
        self.items = list(items)
        self.preprocess = preprocess
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import torch

        from edgetl.core.images import load_rgb

        path, label = self.items[i]
        image = load_rgb(path, min_side=self.preprocess.resize)
        if self.transform is None:
            x = torch.from_numpy(self.preprocess.to_array(image).transpose(2, 0, 1).copy())
        else:
            x = self.transform(image)
        return x, label
