"""The one scanner of labelled image folders (torch-free): finetune, evaluate and the
device's retrain all read `DATA/<class>/...` through `scan_classes`, so they agree on what
a class is.

Rules: a class is a direct sub-folder whose name does not start with '.'; its images are
found recursively (scan_images: hidden files ignored, bad files skipped by name). A
sub-folder that is a symlink back to DATA or one of its parents is skipped with a warning
(it would make a class of every image). A name that cannot be a label (a line break) is
refused, naming the folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.core.images import Skipped, report_skipped, scan_images
from edgetl.errors import EdgetlError

log = logging.getLogger("edgetl")

_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@dataclass
class ClassScan:
    root: Path
    labels: list[str]  # every class (given labels first, in their order; else the folders, sorted)
    items: list[tuple[Path, int]] = field(default_factory=list)  # (image, index into labels), sorted
    skipped: list[Skipped] = field(default_factory=list)

    def by_label(self) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        for path, i in self.items:
            out.setdefault(self.labels[i], []).append(path)
        return out


def _loops_back(folder: Path, root: Path) -> bool:
    if not folder.is_symlink():
        return False
    target, base = folder.resolve(), root.resolve()
    return target == base or target in base.parents or base in target.parents


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of `root` by the rules above."""
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        if _loops_back(p, root):
            log.warning("class folder '%s' is a symlink to '%s', which contains it; skipped", p, p.resolve())
            continue
        if any(c in p.name for c in _LINE_BREAKS):
            raise EdgetlError(f"class folder {str(p)!r} has a line break in its name, which cannot be a label; "
                              "rename the folder")
        out.append(p)
    return out


def scan_classes(root: str | Path, labels: Sequence[str] | None = None, *, check: bool = True,
                 known_good: Callable[[Path], bool] | None = None, loose_files: str = "ignore") -> ClassScan:
    """Scan `root/<class>/...`.

    Args:
        root: the data folder.
        labels: the known labels; a class folder outside them is an error. None: the folders are the labels.
        check: decode each file once to find bad ones up front.
        known_good: files that decoded before (skip decoding them again).
        loose_files: "ignore" or "skip" (report) images lying directly in `root`.

    Returns:
        The ClassScan (skipped files already reported, one warning line each).

    Raises:
        EdgetlError: `root` is missing, has no class folders, an unknown class, or a bad name.
    """
    root = Path(root)
    if not root.is_dir():
        raise EdgetlError(f"data folder '{root}' does not exist or is not a folder; pass a folder of <class>/ "
                          "sub-folders")
    dirs = class_folders(root)
    if not dirs:
        raise EdgetlError(f"'{root}' has no class sub-folders; expected {root}/<class>/image.jpg")
    found = [d.name for d in dirs]
    if labels is None:
        labels = found
    else:
        labels = list(labels)
        unknown = [c for c in found if c not in labels]
        if unknown:
            raise EdgetlError(f"'{root}' has class folders {unknown} that the model does not know; expected "
                              f"sub-folders named after its labels: {labels}")
    scan = ClassScan(root, list(labels))
    total = 0
    for d in dirs:
        good, bad = scan_images(d, check=check, known_good=known_good)
        total += len(good) + len(bad)
        scan.items += [(p, scan.labels.index(d.name)) for p in good]
        scan.skipped += bad
    if loose_files == "skip":
        for p in sorted(root.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                scan.skipped.append(Skipped(p, "is not inside a class folder"))
                total += 1
    report_skipped(scan.skipped, total)
    return scan
