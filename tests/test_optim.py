"""The head's optimizer is torch's AdamW update, bit for bit (edgetl/transfer/train.py says so)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgetl.transfer.train import FunctionalAdamW


def test_functional_adamw_equals_torch_adamw_bit_for_bit():
    torch.manual_seed(0)
    ours_model = nn.Linear(16, 5)
    ref_model = copy.deepcopy(ours_model)
    ours = FunctionalAdamW(ours_model.parameters(), lr=3e-3, weight_decay=0.05)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=3e-3, weight_decay=0.05, foreach=False)
    x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))
    for step in range(7):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[step * 8:(step + 1) * 8]), y[step * 8:(step + 1) * 8]).backward()
            opt.step()
        for a, b in zip(ours_model.parameters(), ref_model.parameters()):
            assert torch.equal(a, b), f"step {step}: max diff {(a - b).abs().max().item()}"
    assert not torch.equal(ours_model.weight, copy.deepcopy(ref_model).weight * 0)  # it really moved
