"""Putting bundles into the build's output folder, with BundleWriter's rules: a complete bundle
is swapped in whole (staged beside it, verified, renamed), an unchanged one is left alone, and
nothing that is not an edgetl bundle, or holds heads trained on a device, is overwritten."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from edgetl.bundle import Bundle
from edgetl.bundle.manifest import MANIFEST, BundleError, Manifest
from edgetl.bundle.writer import check_destination
from edgetl.core.fsutil import staged_replace

log = logging.getLogger("edgetl")


def install_bundle(src: Path, dest: Path) -> bool:
    """Make `dest` a copy of the bundle `src` (its listed files and manifest; no device state).

    Args:
        src: a verified bundle (a build cache entry).
        dest: the folder to write: missing, empty, or an earlier bundle.

    Returns:
        True when copied, False when `dest` already held this very bundle, intact.

    Raises:
        BundleError: `dest` holds something that is not an edgetl bundle, or a bundle whose
            head store holds versions trained on a device (the message names the fix).
    """
    src, dest = Path(src), Path(dest)
    body = (src / MANIFEST).read_bytes()
    if (dest / MANIFEST).is_file() and (dest / MANIFEST).read_bytes() == body:
        try:
            Bundle.open(dest)
            return False
        except BundleError:
            log.warning("'%s' holds this bundle's manifest but a damaged file; copying it again", dest)
    check_destination(dest)

    def accepted_then_checked() -> None:
        Bundle.open(stage)  # what a device will accept
        check_destination(dest)  # again: a device may have retrained in it meanwhile

    with staged_replace(dest, "build", before_swap=accepted_then_checked) as stage:
        for name in [*Manifest.read(src).files, MANIFEST]:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, stage / name)
    return True


def remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete bundles under `folder` whose names are not in `keep` (earlier builds' candidates
    or targets), never anything that is not a plain edgetl bundle."""
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if path.name in keep or path.name.startswith(".") or not path.is_dir():
            continue
        try:
            check_destination(path)
        except BundleError as exc:
            log.warning("left '%s' in place: %s", path, exc)
            continue
        if (path / MANIFEST).is_file():
            shutil.rmtree(path)
            log.info("removed '%s' (not in this build)", path)
