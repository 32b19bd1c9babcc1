"""Every registered backbone's INT8 TFLite runs in one XNNPACK partition (issue 16), the
int8-delegable rewrite (edgetl/formats/delegable.py) is exact in float, and INT8 agrees with
FP32 on real demo images with real weights (EfficientNet-Lite0)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO

pytestmark = pytest.mark.slow

CALIBRATION = 16  # demo images: enough for ranges, and the conversion dominates the time


def _demo_images() -> list[Path]:
    return sorted(DEMO.glob("*/*.JPG"))


def _request(module, spec, precision: str, base: Path | None = None):
    from edgetl.formats import ExportRequest
    from edgetl.quantize.recipes import load_recipe

    pre = spec.preprocess("NHWC")
    images = _demo_images()[::7][:CALIBRATION]
    return ExportRequest(module=module.eval(), size=spec.size, layout="NHWC", precision=precision,
                         recipe=replace(load_recipe("minmax"), samples=CALIBRATION),
                         calibration=lambda: [pre.batch([p]) for p in images], threads=2, base=base)


def _backbones():
    from edgetl.backbones import BACKBONES

    return list(BACKBONES)


@pytest.mark.parametrize("name", _backbones())
def test_int8_export_is_one_xnnpack_partition(name, tmp_path):
    from edgetl.backbones import create_backbone, get_spec
    from edgetl.formats.tflite import export, validate, xnnpack_partitions

    spec = get_spec(name)
    module, _ = create_backbone(name, "none")  # partitioning depends on ops, not on weight values
    out = export(_request(module, spec, "int8"), tmp_path / "int8.tflite")
    partitions, outside = xnnpack_partitions(out.path)
    assert (partitions, outside) == (1, []), f"{name}: {partitions} partitions, outside: {outside}"
    facts = validate(out.path, "int8")  # full integer, and the manifest records the partitioning
    assert facts["xnnpack"] == {"partitions": 1, "undelegated_ops": []}
    assert not list(tmp_path.glob("*.fp32*")) and not list(tmp_path.glob("*.delegable*"))  # no leftovers


def test_rewritten_activations_equal_the_originals():
    import torch
    from torch import nn

    from edgetl.formats.delegable import DelegableHardSigmoid, DelegableHardSwish

    x = torch.randn(4, 16, 9, 9, generator=torch.Generator().manual_seed(0)) * 5  # well past the +-3 knees
    x = torch.cat([x.flatten(), torch.tensor([-3.0, 3.0, 0.0, -1e-3, 1e-3, -6.0, 6.0])])
    # float32 rounding: relative 1e-7 of values up to ~20 here
    assert (DelegableHardSwish()(x) - nn.Hardswish()(x)).abs().max() <= 1e-6 * float(x.abs().max())
    assert (DelegableHardSigmoid()(x) - nn.Hardsigmoid()(x)).abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "mobilenetv3_small_100"])
def test_rewritten_backbone_equals_the_original(name):
    import torch

    from edgetl.backbones import create_backbone
    from edgetl.formats.delegable import DelegableHardSwish, count_rewrites, make_delegable

    torch.manual_seed(0)
    module, _ = create_backbone(name, "none")
    module.eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    counts = count_rewrites(module)
    assert counts["Hardswish"] > 0 and counts["Hardsigmoid"] > 0
    rewritten = make_delegable(module)
    assert not count_rewrites(rewritten) and any(isinstance(m, DelegableHardSwish) for m in rewritten.modules())
    assert count_rewrites(module) == counts  # the original keeps its modules and weights
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = module(x), rewritten(x)
    assert (a - b).abs().max() <= 1e-6 * max(1.0, float(a.abs().max())), float((a - b).abs().max())


def test_lite0_int8_agrees_with_fp32_on_real_images(tmp_path):
    """Real ImageNet weights, fused classifier (backbone + 1000-class head): INT8 keeps FP32's
    ImageNet class ranking and logit direction on demo photos it was not calibrated on."""
    from edgetl.backbones import create_imagenet_classifier, get_spec
    from edgetl.backends import open_backend
    from edgetl.formats.tflite import describe_io, export

    spec = get_spec("tf_efficientnet_lite0")
    model, _ = create_imagenet_classifier(spec.name, "default")
    fp32 = export(_request(model, spec, "fp32"), tmp_path / "fp32.tflite")
    int8 = export(_request(model, spec, "int8", base=fp32.path), tmp_path / "int8.tflite")
    calibrated = set(_demo_images()[::7][:CALIBRATION])
    held_out = [p for p in _demo_images()[3::6] if p not in calibrated][:32]
    batch = spec.preprocess("NHWC").batch(held_out)
    logits = {}
    for kind, out in (("fp32", fp32), ("int8", int8)):
        io = describe_io(out.path, "NHWC")
        logits[kind] = open_backend("tflite", out.path, io, threads=2).run(batch)
    a, b = logits["fp32"], logits["int8"]
    agreement = float(np.mean(a.argmax(1) == b.argmax(1)))
    in_top5 = float(np.mean([a[i].argmax() in np.argsort(-b[i])[:5] for i in range(len(a))]))
    cosine = float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    # Hand photos are no ImageNet class: FP32's top-1 there is a low-margin guess (measured on
    # 40 demo photos: top-1 agreement 0.75-0.85, FP32's top-1 in INT8's top-5 0.975-1.0, logit
    # cosine 0.977-0.991 over minmax / moving-average and 16 / 64 calibration images).
    assert agreement >= 0.7 and in_top5 >= 0.95 and cosine >= 0.96, (agreement, in_top5, cosine)
