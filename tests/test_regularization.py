"""The regularizers do what their options say: augmentation varies the input, label smoothing
softens the head, dropout is active only while training. (L2-SP: test_finetune.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgetl.backbones import get_spec
from edgetl.data import train_transform
from edgetl.errors import EdgetlError
from edgetl.transfer.config import FinetuneConfig
from edgetl.transfer.train import train_head
from edgetl.core.images import load_rgb
from tests.conftest import DEMO

PRE = get_spec("tf_efficientnet_lite0").preprocess("NCHW")


@pytest.mark.parametrize("augment", ["light", "strong"])
def test_augmentation_varies_the_image_and_keeps_the_input_contract(augment):
    image = load_rgb(next((DEMO / "3").iterdir()))
    transform = train_transform(PRE, augment)
    torch.manual_seed(0)
    a, b = transform(image), transform(image)
    assert a.shape == b.shape == (3, PRE.size, PRE.size) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # random crops / flips / colour: two draws differ
    # normalised with the backbone's mean = std = 0.5: values in [-1, 1] like the eval path
    assert a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6


def test_augment_none_and_unknown():
    assert train_transform(PRE, "none") is None  # the caller uses the eval preprocessing
    with pytest.raises(EdgetlError, match=r"augment \(--augment\) 'heavy'"):
        train_transform(PRE, "heavy")


def _blobs(seed: int, n: int = 60, dim: int = 16):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, dim)).astype(np.float32) + (y[:, None] * 3.0).astype(np.float32)
    return x, y.tolist()


def test_label_smoothing_softens_the_trained_head():
    """Separable data: without smoothing the head grows confident; with 0.3 its confidence is capped."""
    (tx, ty), (vx, vy) = _blobs(0), _blobs(1)

    def confidence(smoothing: float) -> float:
        torch.manual_seed(0)
        head = nn.Linear(tx.shape[1], 2)
        cfg = FinetuneConfig(label_smoothing=smoothing, batch_size=16, seed=0)
        train_head(head, 0.0, tx, ty, vx, vy, cfg, epochs=200, lr=5e-2, patience=500)
        with torch.no_grad():
            return float(torch.softmax(head(torch.from_numpy(vx)), 1).max(1).values.mean())

    sharp, smooth = confidence(0.0), confidence(0.3)
    assert sharp > 0.97
    assert smooth < 0.92  # the smoothed target for the true class is 0.85 (measured: 0.88 vs 0.98)
    assert smooth < sharp


def test_head_dropout_is_active_in_training_only():
    from edgetl.model import Classifier

    model = Classifier(nn.Identity(), 8, 3, dropout=0.5)
    x = torch.ones(4, 8)
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
