"""Robust image decoding and folder scanning, shared by the host and the device (torch-free).

Every image that enters training, calibration, evaluation or the device goes through
`load_rgb`, so EXIF orientation, colour modes and bad files are handled in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger("edgetl")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Decompression-bomb guard: 64 MP is far above any camera frame we expect (the digits set's
# largest is 3024x3024 = 9 MP) and far below what would exhaust memory on a board.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Panoramas reach about 1:10. Past 1:100 the centre crop keeps under 1% of the picture: such a
# file is a strip, a sprite sheet or a forged header, and only wastes a training slot.
MAX_ASPECT = 100


class BadImage(ValueError):
    def __init__(self, path: Path, reason: str):
        super().__init__(f"image '{path}' {reason}")
        self.path = Path(path)
        self.reason = reason


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert('RGB') clips 16-bit values to 255 (a white image); rescale instead.
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, as a viewer would show them, not black garbage.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode `path` to an upright RGB image, or raise BadImage saying why.

    `min_side` lets JPEGs decode at a reduced DCT scale whose shorter side is still at
    least that many pixels, so a 3024x3024 photo never materialises at full size.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImage(path, f"cannot be read ({exc.strerror})") from None
    if size == 0:
        raise BadImage(path, "is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise BadImage(path, f"is {im.width}x{im.height} pixels, above the {MAX_PIXELS // 1_000_000} MP "
                                     "pixel limit")
            if max(im.size) > MAX_ASPECT * min(im.size):
                raise BadImage(path, f"is {im.width}x{im.height} pixels, an aspect ratio above 1:{MAX_ASPECT}; "
                                     "not a photo")
            if min_side and im.format == "JPEG":
                im.draft("RGB", (min_side, min_side))
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(path, f"is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage(path, "is not an image Pillow can read (wrong extension or corrupt header)") from None
    except MemoryError:
        # A header that declares a gigabyte-sized chunk: one bad file, not the end of a scan.
        raise BadImage(path, "declares more data than can be decoded (corrupt or hostile header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(path, f"is truncated or corrupt ({exc})") from None


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def scan_images(folder: Path, check: bool = True,
                known_good: Callable[[Path], bool] | None = None) -> tuple[list[Path], list[Skipped]]:
    """Image files under `folder` (recursive, sorted) and the files skipped with reasons.

    With `check`, each file is decoded once at a small DCT scale, so truncated, empty and
    mislabelled files are found up front instead of in the middle of an epoch. Files for
    which `known_good` says yes (e.g. their content is already in an embedding cache) have
    decoded before and are not decoded again.
    """
    good: list[Path] = []
    skipped: list[Skipped] = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue  # .DS_Store, editor swap files: not data, not worth a warning
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(Skipped(path, f"has extension '{path.suffix}', not an image type"))
            continue
        if check and not (known_good and known_good(path)):
            try:
                load_rgb(path, min_side=32)
            except BadImage as exc:
                skipped.append(Skipped(path, exc.reason))
                continue
        good.append(path)
    return good, skipped


def report_skipped(skipped: list[Skipped], total: int) -> None:
    """One warning line per skipped file and a summary, so nothing is dropped silently."""
    for i, item in enumerate(skipped, 1):
        log.warning("image '%s' %s; skipped (%d of %d)", item.path, item.reason, i, total)
    if skipped:
        log.warning("%d of %d files skipped; the rest are used", len(skipped), total)
