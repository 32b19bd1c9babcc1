"""Robust decoding: every awkward file a user really has, made for real with Pillow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgetl.core.images import MAX_PIXELS, BadImage, load_rgb, scan_images
from tests.conftest import DIGITS, needs_shared


def _rgb(size=(64, 48), colour=(200, 30, 30)):
    return Image.new("RGB", size, colour)


def test_modes_become_rgb(tmp_path):
    _rgb().convert("L").save(tmp_path / "gray.png")
    _rgb().convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgba = _rgb().convert("RGBA")
    rgba.putalpha(0)
    rgba.save(tmp_path / "transparent.png")
    _rgb().convert("P").save(tmp_path / "palette.gif")
    Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16)).save(tmp_path / "white16.png")
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(tmp_path / "mid16.png")
    for name in ("gray.png", "cmyk.jpg", "transparent.png", "palette.gif", "white16.png", "mid16.png"):
        assert load_rgb(tmp_path / name).mode == "RGB", name
    assert np.asarray(load_rgb(tmp_path / "transparent.png")).min() == 255  # white, not black
    mid = np.asarray(load_rgb(tmp_path / "mid16.png"))
    assert 120 <= mid.mean() <= 135  # 16-bit rescaled, not clipped to white


def test_exif_orientation_applied(tmp_path):
    im = _rgb((80, 40))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (40, 80)


@pytest.mark.parametrize("name,content,reason", [
    ("empty.jpg", b"", "empty"),
    ("notes.jpg", b"this is a text file, not a JPEG\n" * 10, "not an image"),
])
def test_bad_bytes(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadImage, match=reason) as err:
        load_rgb(tmp_path / name)
    assert name in str(err.value)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="truncated"):
        load_rgb(tmp_path / "cut.jpg")


def test_decompression_bomb_refused(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 100
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")
    with pytest.raises(BadImage, match="pixel limit"):
        load_rgb(tmp_path / "bomb.png")


@needs_shared(DIGITS)
def test_huge_photo_decoded_at_reduced_scale():
    huge = DIGITS / "7" / "IMG_5874.JPG"
    with Image.open(huge) as im:
        assert im.size == (3024, 3024)
    small = load_rgb(huge, min_side=256)
    assert 256 <= min(small.size) < 1024  # never materialised at 9 MP


def test_scan_reports_every_bad_file_by_name(tmp_path):
    _rgb().save(tmp_path / "good one ü.jpg")
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    good, skipped = scan_images(tmp_path)
    assert [p.name for p in good] == ["good one ü.jpg"]
    assert sorted(s.path.name for s in skipped) == ["readme.txt", "zero.jpg"]
