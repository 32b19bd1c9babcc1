"""Which backbone parameters train, at which learning rate, and how `auto` chooses.

Stages run bottom-up: [stem], each block group of `backbone.blocks`, [head conv + norm].
BatchNorm running statistics stay frozen in every strategy (see `set_train_mode`).
`partial --unfreeze N` trains the top N stages; `full` trains all of them with a learning
rate that shrinks by `layer_decay` per stage going down (discriminative learning rates).
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from edgetl.errors import EdgetlError

# Images per class below which fine-tuning the backbone overfits more than it gains
# (feature extraction wins), and above which unfreezing everything pays off.
AUTO_LINEAR_BELOW = 40
AUTO_FULL_FROM = 400


def choose_strategy(train_items, labels) -> tuple[str, str]:
    counts = Counter(c for _, c in train_items)
    per_class = min(counts.get(i, 0) for i in range(len(labels)))
    if per_class < AUTO_LINEAR_BELOW:
        return "linear", (f"smallest class has {per_class} training images (< {AUTO_LINEAR_BELOW}): "
                          "a frozen backbone with a new head overfits least")
    if per_class < AUTO_FULL_FROM:
        return "partial", (f"smallest class has {per_class} training images ({AUTO_LINEAR_BELOW}-{AUTO_FULL_FROM - 1}): "
                           "adapting the top stages gains accuracy without overfitting the low-level filters")
    return "full", f"smallest class has {per_class} training images (>= {AUTO_FULL_FROM}): enough to adapt every stage"


def backbone_stages(backbone: nn.Module) -> list[list[nn.Module]]:
    """timm EfficientNet / MobileNetV2 / MobileNetV3 split into stages, bottom-up."""
    stem = [backbone.conv_stem, backbone.bn1]
    top = [m for m in (getattr(backbone, "conv_head", None), getattr(backbone, "bn2", None),
                       getattr(backbone, "norm_head", None)) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    return [stem] + [[block] for block in backbone.blocks] + [top]


def freeze_for(strategy: str, backbone: nn.Module, unfreeze: int) -> list[list[nn.Module]]:
    """Set requires_grad; return the trainable stages, top first."""
    stages = backbone_stages(backbone)
    if strategy == "linear":
        n = 0
    elif strategy == "partial":
        if not 1 <= unfreeze <= len(stages):
            raise EdgetlError(f"unfreeze {unfreeze} must be between 1 and {len(stages)} for this backbone")
        n = unfreeze
    elif strategy == "full":
        n = len(stages)
    else:
        raise EdgetlError(f"unknown strategy '{strategy}'")
    for p in backbone.parameters():
        p.requires_grad = False
    trainable = stages[len(stages) - n:][::-1]
    for stage in trainable:
        for module in stage:
            for p in module.parameters():
                p.requires_grad = True
    return trainable


def set_train_mode(model: nn.Module) -> None:
    """Train mode everywhere except BatchNorm, whose running statistics stay the pretrained ones.

    Batch statistics of a small, shifted dataset (100x100 hand photos upscaled to 224) differ
    from ImageNet's; letting BN re-estimate them moves every embedding at once and wrecks the
    linear-probe head the fine-tuning starts from. BN scale and shift still train where the
    stage is unfrozen (the Keras transfer-learning guide's advice for EfficientNet).
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def param_groups(model: nn.Module, trainable_stages, lr: float, backbone_lr_ratio: float, layer_decay: float,
                 weight_decay: float, l2sp: bool) -> list[dict]:
    """Head at `lr`; backbone stage k from the top at lr * ratio * decay**k.

    With L2-SP the backbone is pulled toward its pretrained weights instead of toward zero,
    so its AdamW weight decay is off (Li et al., 2018).
    """
    groups = [{"params": [p for h in model.heads() for p in h.parameters()], "lr": lr,
               "weight_decay": weight_decay, "name": "head"}]
    for k, stage in enumerate(trainable_stages):
        params = [p for m in stage for p in m.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * backbone_lr_ratio * layer_decay ** k,
                           "weight_decay": 0.0 if l2sp else weight_decay, "name": f"stage-{k}"})
    return groups
