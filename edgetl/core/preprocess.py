"""The one preprocessing function: host evaluation, calibration, export checks and the device
all call it, so what the model saw in validation is what it sees on the board."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image

from edgetl.core.images import load_rgb

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

# Resize-then-crop while the resized image is at most this many times resize x resize pixels.
EXACT_PATH_AREA = 64

ImageLike = Union[str, Path, Image.Image, np.ndarray]


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `resize`, centre-crop `size`, scale to [0,1], (x-mean)/std."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    layout: str = "NCHW"

    def __post_init__(self):
        if self.interpolation not in _PIL_INTERPOLATION:
            raise ValueError(f"interpolation '{self.interpolation}' is not one of {sorted(_PIL_INTERPOLATION)}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout '{self.layout}' must be NCHW or NHWC")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(
            size=int(d["size"]),
            resize=int(d["resize"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bicubic")),
            layout=str(d.get("layout", "NCHW")),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def with_layout(self, layout: str) -> "Preprocess":
        return Preprocess(self.size, self.resize, self.mean, self.std, self.interpolation, layout)

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Shorter side to `resize`, centre crop `size`.

        Photos (aspect ratio up to 1:64) take torchvision's exact path, resize then crop, so
        the device sees the very pixels timm's eval transform gives in training
        (tests/test_export_tflite.py::test_device_preprocessing_equals_training_eval_transform).
        Beyond that, resizing whole would be unbounded (a 20000x1 strip makes a 5 GB image), so
        the crop window is mapped back to source coordinates and only that box is resampled:
        memory stays bounded by the output whatever the aspect ratio; the pixels may differ
        from resize-then-crop by one 8-bit level.
        """
        w, h = img.size
        # Same rounding as torchvision's Resize(int): shorter side to `resize`, keep aspect.
        if w <= h:
            new_w, new_h = self.resize, int(self.resize * h / w)
        else:
            new_w, new_h = int(self.resize * w / h), self.resize
        left = int(round((new_w - self.size) / 2.0))
        top = int(round((new_h - self.size) / 2.0))
        if new_w * new_h <= EXACT_PATH_AREA * self.resize * self.resize:
            img = img.resize((new_w, new_h), _PIL_INTERPOLATION[self.interpolation])
            return img.crop((left, top, left + self.size, top + self.size))
        sx, sy = w / new_w, h / new_h
        # Window clipped to the resized image; only a size > resize config leaves a black border.
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + self.size, new_w), min(top + self.size, new_h)
        box = (x0 * sx, y0 * sy, min(x1 * sx, w), min(y1 * sy, h))
        kept = img.resize((x1 - x0, y1 - y0), _PIL_INTERPOLATION[self.interpolation], box=box)
        if (x1 - x0, y1 - y0) == (self.size, self.size):
            return kept
        canvas = Image.new(img.mode, (self.size, self.size))
        canvas.paste(kept, (x0 - left, y0 - top))
        return canvas

    def to_array(self, image: ImageLike) -> np.ndarray:
        """One image -> float32 HWC, normalised."""
        if isinstance(image, (str, Path)):
            image = load_rgb(image, min_side=self.resize)
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image.astype(np.uint8)).convert("RGB")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        arr = np.asarray(self.resize_crop(image), dtype=np.float32) / 255.0
        return (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def batch(self, images: Iterable[ImageLike]) -> np.ndarray:
        """Images -> float32 batch in this object's layout."""
        arr = np.stack([self.to_array(im) for im in images])
        return arr if self.layout == "NHWC" else np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
