"""Fine-tuning options as one frozen object (what the CLI parses, what metrics.json records)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

STRATEGIES = ("auto", "linear", "partial", "full")


@dataclass(frozen=True)
class FinetuneConfig:
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "default"
    input_size: int | None = None  # None: the backbone's default (224 for Lite0)
    strategy: str = "auto"
    unfreeze: int = 3  # partial: trainable stages counted from the top
    epochs: int | None = None  # None: the strategy's default
    batch_size: int = 32
    lr: float | None = None  # head learning rate; None: the strategy's default
    backbone_lr_ratio: float = 0.1  # top backbone stage lr = lr * ratio (discriminative lr)
    layer_decay: float = 0.7  # each stage further down gets this factor less
    weight_decay: float = 1e-4
    dropout: float = 0.2
    label_smoothing: float = 0.1
    augment: str = "light"
    l2sp: float = 0.0  # > 0: penalty toward the pretrained weights instead of weight decay
    patience: int | None = None
    val_split: float = 0.2
    seed: int = 0
    cache_dir: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# Per-strategy defaults: the linear head trains on cached embeddings (cheap epochs);
# partial/full epochs run the backbone on augmented images.
DEFAULTS = {
    "linear": {"epochs": 300, "lr": 1e-3, "patience": 40},
    "partial": {"epochs": 12, "lr": 1e-3, "patience": 4},
    "full": {"epochs": 10, "lr": 1e-3, "patience": 3},
}
