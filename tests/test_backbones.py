"""The registry, the weight resolver, and proof that the default weights are ImageNet's."""

from __future__ import annotations

import pytest
import torch
import torchvision

from edgetl.backbones import BACKBONES, create_backbone, create_imagenet_classifier, get_spec
from edgetl.errors import EdgetlError
from edgetl.core.images import scan_images
from tests.conftest import HYMENOPTERA, needs_shared


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_embedding_width_matches_timm(name):
    model, origin = create_backbone(name, weights="none")
    spec = get_spec(name)
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, spec.size, spec.size))
    assert out.shape == (1, spec.embedding_dim)
    assert "random" in origin
    assert spec.preprocess().resize >= spec.size


@needs_shared(HYMENOPTERA)
def test_default_weights_are_imagenet_weights():
    """Top-5 ImageNet prediction holds bee (309) or ant (310) for >= 80% of hymenoptera val."""
    model, origin = create_imagenet_classifier("tf_efficientnet_lite0")
    assert origin.startswith("package:")
    paths, _ = scan_images(HYMENOPTERA / "val")
    pre = get_spec("tf_efficientnet_lite0").preprocess()
    hits = 0
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            top5 = model(torch.from_numpy(pre.batch(paths[start:start + 32]))).topk(5).indices
            hits += sum(1 for row in top5.tolist() if 309 in row or 310 in row)
    assert len(paths) == 153
    assert hits / len(paths) >= 0.80


def test_torchvision_checkpoint_maps_onto_timm(tmp_path):
    """A torchvision MobileNetV3 state dict (other names, Linear head) loads by order and shape."""
    tv = torchvision.models.mobilenet_v3_large()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model, origin = create_backbone("mobilenetv3_large_100", weights=str(tmp_path / "tv.pth"))
    first_tv = tv.features[0][0].weight
    assert torch.equal(model.conv_stem.weight, first_tv)
    assert torch.equal(model.conv_head.weight.flatten(), tv.classifier[0].weight.flatten())


def test_wrong_architecture_weights_named_in_error(tmp_path):
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mnv2.pth")
    with pytest.raises(EdgetlError, match="mnv2.pth.*do not fit"):
        create_backbone("mobilenetv3_small_100", weights=str(tmp_path / "mnv2.pth"))


def test_unsafe_or_missing_weights_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EdgetlError, match="junk.pth"):
        create_backbone("tf_efficientnet_lite0", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(EdgetlError, match="does not exist"):
        create_backbone("tf_efficientnet_lite0", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(EdgetlError, match="no pretrained weights installed"):
        create_backbone("mobilenetv2_100")
