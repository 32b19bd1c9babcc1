"""Preprocessing memory is bounded by the output size, whatever the input's aspect ratio.

A 143-byte 20000x1 PNG used to make a 20000*256 x 256 intermediate (about 5 GB) before the
centre crop; the checks run in a child process capped at 1 GB of address space, so a
regression fails with MemoryError instead of swapping the test machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.core.images import load_rgb
from edgetl.core.preprocess import _PIL_INTERPOLATION, Preprocess
from tests.conftest import DEMO, REPO

STRIPS = [(20000, 1), (1, 20000), (200000, 1)]
ADDRESS_SPACE = 1 << 30  # 1 GB: numpy and Pillow import in about 0.4 GB of it

# Runs in the child: torch is never imported there (it alone would not fit in 1 GB).
CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from PIL import Image
    from edgetl.core.images import BadImage
    from edgetl.core.preprocess import Preprocess

    p = Preprocess(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    result = {{}}
    for path in sys.argv[1:]:
        try:
            shape = p.batch([path]).shape
            result[path] = {{"shape": list(shape)}}
        except BadImage as exc:
            result[path] = {{"bad": str(exc), "named": exc.path == Path(path)}}
        # Bypassing load_rgb (an array or PIL image from a camera) must be bounded too.
        with Image.open(path) as im:
            result[path]["in_memory"] = list(p.to_array(im.convert("RGB")).shape)
    print(json.dumps(result))
""")


def _preprocess_capped(paths: list[Path]) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD.format(limit=ADDRESS_SPACE), *map(str, paths)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_strips_refused_by_name_and_bounded_in_memory(tmp_path):
    paths = []
    for w, h in STRIPS:
        path = tmp_path / f"strip-{w}x{h}.png"
        Image.new("RGB", (w, h), (10, 20, 30)).save(path)
        assert path.stat().st_size < 1000  # tiny files: the size on disk says nothing
        paths.append(path)
    result = _preprocess_capped(paths)
    for (w, h), path in zip(STRIPS, paths):
        got = result[str(path)]
        assert got.get("named"), got
        assert f"is {w}x{h} pixels, an aspect ratio above 1:100; not a photo" in got["bad"]
        assert got["in_memory"] == [224, 224, 3]


def test_elongated_legal_image_preprocesses_within_the_cap(tmp_path):
    path = tmp_path / "banner.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (100, 6000, 3), dtype=np.uint8)).save(path)
    got = _preprocess_capped([path])[str(path)]
    assert got == {"shape": [1, 3, 224, 224], "in_memory": [224, 224, 3]}


def _old_resize_crop(p: Preprocess, img: Image.Image) -> Image.Image:
    """The former method: resize the whole image, then crop (the reference)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = p.resize, int(p.resize * h / w)
    else:
        new_w, new_h = int(p.resize * w / h), p.resize
    img = img.resize((new_w, new_h), _PIL_INTERPOLATION[p.interpolation])
    left = int(round((new_w - p.size) / 2.0))
    top = int(round((new_h - p.size) / 2.0))
    return img.crop((left, top, left + p.size, top + p.size))


@pytest.mark.parametrize("size,resize,interpolation", [(224, 256, "bicubic"), (288, 320, "bicubic"),
                                                       (224, 224, "bilinear"), (256, 224, "bicubic")])
def test_same_pixels_as_resize_then_crop(size, resize, interpolation):
    p = Preprocess(size, resize, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation)
    photos = [sorted((DEMO / c).iterdir())[0] for c in ("0", "3", "7")]
    for photo in photos:
        im = load_rgb(photo, min_side=resize)
        # the photo, portrait and landscape crops of it, and a small one that gets upscaled
        for img in (im, im.crop((0, 0, im.width, im.height // 3)), im.crop((0, 0, im.width // 3, im.height)),
                    im.resize((97, 61))):
            new = p.to_array(img)
            ref = np.asarray(_old_resize_crop(p, img), dtype=np.float32) / 255.0
            ref = (ref - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
            assert new.shape == ref.shape == (size, size, 3)
            assert np.abs(new - ref).max() < 0.05, (photo.name, img.size)
