"""Fine-tuning options as one frozen object: the one place each default lives. The CLI
generates its `edgetl finetune` options from these fields (edgetl/cli/options.py) and
metrics.json records them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgetl.core.options import opt

STRATEGIES = ("auto", "linear", "partial", "full")
AUGMENTS = ("none", "light", "strong")


@dataclass(frozen=True)
class FinetuneConfig:
    backbone: str = opt("tf_efficientnet_lite0", "Registered backbone (see `edgetl backbones`).")
    weights: str = opt("default", "'default' (installed ImageNet weights), PATH to a timm/torchvision/lukemelas "
                                  "state dict, 'timm' (download, needs network) or 'none' (random init).")
    input_size: int | None = opt(None, "Input resolution in pixels, in training, export and on the device "
                                       "(default: the backbone's, 224 for Lite0); 288 is 1.65x the compute of 224.",
                                 lo=64, hi=640)
    strategy: str = opt("auto", "linear: frozen backbone + new head; partial: top N stages; full: everything; "
                                "auto: by images per class.", choices=STRATEGIES)
    unfreeze: int = opt(3, "partial: number of top backbone stages to train.", lo=1, hi=64)
    epochs: int | None = opt(None, "Maximum epochs (default per strategy: linear 300, partial 12, full 10).",
                             lo=1, hi=100000)
    batch_size: int = opt(32, "Images per training step.", lo=1, hi=4096)
    lr: float | None = opt(None, "Head learning rate (default 1e-3); backbone stages get less.", lo=0.0, hi=10.0)
    backbone_lr_ratio: float = opt(0.1, "Top backbone stage lr = lr x ratio (discriminative lr).", lo=0.0, hi=10.0)
    layer_decay: float = opt(0.7, "Each lower stage's lr is multiplied by this.", lo=0.0, hi=1.0)
    weight_decay: float = opt(1e-4, "AdamW weight decay.", lo=0.0, hi=10.0)
    dropout: float = opt(0.2, "Dropout on the embedding before the head.", lo=0.0, hi=0.95)
    label_smoothing: float = opt(0.1, "Label smoothing of the cross-entropy.", lo=0.0, hi=0.95)
    augment: str = opt("light", "Training augmentation (partial/full; linear trains on cached embeddings).",
                       choices=AUGMENTS)
    l2sp: float = opt(0.0, "L2-SP strength: pull backbone weights toward the pretrained ones (replaces their "
                           "weight decay).", lo=0.0, hi=1e6)
    patience: int | None = opt(None, "Early-stopping patience in epochs (default per strategy).", lo=1, hi=100000)
    val_split: float = opt(0.2, "Validation fraction when DATA has no train/ and val/.", lo=0.0, hi=1.0)
    seed: int = opt(0, "Seeds the split, initialisation and batch order.", lo=0, hi=2**32 - 1)
    cache_dir: str | None = opt(None, "Cache of embeddings and resolved backbones (default $EDGETL_CACHE or "
                                      "~/.cache/edgetl); see `edgetl cache`.")

    def to_dict(self) -> dict:
        return asdict(self)


# Per-strategy defaults: the linear head trains on cached embeddings (cheap epochs);
# partial/full epochs run the backbone on augmented images.
DEFAULTS = {
    "linear": {"epochs": 300, "lr": 1e-3, "patience": 40},
    "partial": {"epochs": 12, "lr": 1e-3, "patience": 4},
    "full": {"epochs": 10, "lr": 1e-3, "patience": 3},
}
