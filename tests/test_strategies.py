"""What each strategy trains, at which learning rate, and that BatchNorm statistics stay frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetl.backbones import BACKBONES, create_architecture
from edgetl.errors import EdgetlError
from edgetl.transfer.strategies import backbone_stages, freeze_for, param_groups, set_train_mode
from edgetl.model import Classifier


@pytest.fixture(scope="module")
def lite0_arch():
    return create_architecture("tf_efficientnet_lite0")


def test_discriminative_learning_rates(lite0_arch):
    model = Classifier(lite0_arch, 1280, 2)
    trainable = freeze_for("partial", model.backbone, 3)
    groups = param_groups(model, trainable, lr=1e-3, backbone_lr_ratio=0.1, layer_decay=0.5, weight_decay=1e-4,
                          l2sp=False)
    assert [g["name"] for g in groups] == ["head", "stage-0", "stage-1", "stage-2"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4, 5e-5, 2.5e-5])
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    # the top stage is the head conv; the groups hold exactly the trainable backbone parameters
    assert groups[1]["params"][0] is model.backbone.conv_head.weight
    in_groups = {id(p) for g in groups[1:] for p in g["params"]}
    assert in_groups == {id(p) for p in model.backbone.parameters() if p.requires_grad}
    with_l2sp = param_groups(model, trainable, 1e-3, 0.1, 0.5, 1e-4, l2sp=True)
    assert with_l2sp[0]["weight_decay"] == 1e-4  # the new head still decays toward zero
    assert all(g["weight_decay"] == 0.0 for g in with_l2sp[1:])  # the backbone is pulled to its start instead


def test_linear_freezes_everything_and_unfreeze_is_bounded(lite0_arch):
    assert freeze_for("linear", lite0_arch, 3) == [] and not any(p.requires_grad for p in lite0_arch.parameters())
    with pytest.raises(EdgetlError, match="unfreeze 99 must be between 1 and"):
        freeze_for("partial", lite0_arch, 99)
    assert len(backbone_stages(lite0_arch)) == 1 + len(lite0_arch.blocks) + 1  # stem, block groups, head conv


def test_batchnorm_statistics_stay_pretrained_while_its_affine_trains(lite0_arch):
    model = Classifier(lite0_arch, 1280, 2)
    freeze_for("full", model.backbone, 0)
    bn = model.backbone.bn2
    stats_before = (bn.running_mean.clone(), bn.running_var.clone())
    scale_before = bn.weight.detach().clone()
    set_train_mode(model)
    assert model.training and model.dropout.training and not bn.training
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(0)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 224, 224) * 3 + 1), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    assert torch.equal(bn.running_mean, stats_before[0]) and torch.equal(bn.running_var, stats_before[1])
    assert not torch.equal(bn.weight.detach(), scale_before)


def test_chunked_channels_last_step_matches_the_whole_batch():
    """cpu.py runs a batch as channels-last chunks; with BatchNorm frozen its gradients are the
    batch's, up to float rounding (the NHWC kernels sum in another order)."""
    from edgetl.transfer.cpu import as_input, channels_last, chunks

    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 96, 96), torch.tensor([0, 1, 0, 1, 1, 0])

    def gradients(chunk: int, nhwc: bool) -> dict:
        torch.manual_seed(1)
        model = Classifier(create_architecture("tf_efficientnet_lite0"), 1280, 2)
        freeze_for("partial", model.backbone, 2)
        set_train_mode(model)
        if nhwc:
            channels_last(model)
        for part in chunks(len(y), chunk):  # 6 as 4 + 2: unequal chunks are weighted by size
            xi = as_input(x[part]) if nhwc else x[part]
            (nn.functional.cross_entropy(model(xi), y[part]) * (len(y[part]) / len(y))).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    whole, chunked = gradients(6, nhwc=False), gradients(4, nhwc=True)
    assert whole.keys() == chunked.keys() and len(whole) > 2
    for name, grad in whole.items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(chunked[name], grad, rtol=0, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_gives_the_same_output_channels_last(name):
    from edgetl.transfer.cpu import as_input, channels_last

    torch.manual_seed(0)
    spec = BACKBONES[name]
    model = Classifier(create_architecture(name), spec.embedding_dim, 3).eval()
    x = torch.randn(2, 3, spec.size, spec.size)
    with torch.no_grad():
        reference = model(x)
        nhwc = channels_last(model)(as_input(x))
    torch.testing.assert_close(nhwc, reference, rtol=1e-4, atol=1e-5)
