"""Rewrite a torch backbone into ops that LiteRT's XNNPACK delegate runs in int8.

Why: LiteRT's XNNPACK delegate (ai-edge-litert 2.3.0) takes HARD_SWISH only in float32.
litert-torch turns `nn.Hardswish` (and `x * relu6(x + 3) / 6` written in the orders its
pattern matcher knows) into one HARD_SWISH op, so a full-integer MobileNetV3 falls apart
into one XNNPACK partition per hard-swish with the reference int8 kernel in between:
mobilenetv3_large_100 INT8 had 22 partitions (21 HARD_SWISH outside) and ran slower than
its FP32 graph (docs/benchmarks.md, "XNNPACK partitions and INT8 speed (issue 16)").

What was measured (small modules converted with litert-torch 0.10.0, quantized with
ai-edge-quantizer 0.10.0, partitions counted with `edgetl.formats.tflite.xnnpack_partitions`):

- `relu6(x + 3) * x * (1/6)` converts to ADD (fused RELU6) + MUL, and the constant 1/6 is
  folded into the next convolution's weights; both ops are delegated in int8. The orders
  `x * relu6(x + 3) / 6` and `x * (relu6(x + 3) / 6)` are matched back into HARD_SWISH.
- `x * clamp(x / 6 + 0.5, 0, 1)` becomes RELU_0_TO_1, which the delegate refuses even in float.
- hard-sigmoid as `relu6(x + 3) * (1/6)`: the +3 and the RELU6 fold into the SE's expand
  convolution, the 1/6 is one MUL; delegated in int8.
- timm's squeeze-excite already pools with `x.mean((2, 3), keepdim=True)` (MEAN, delegated in
  int8) and gates with a broadcast MUL (delegated). `avg_pool2d` with the full kernel
  (AVERAGE_POOL_2D) is *not* delegated in int8 here, so the SE is left as it is.

The rewrite is exact up to float rounding: 5e-8 max-abs on mobilenetv3_large_100's
embedding (tests/test_partitions.py checks each module and the whole backbone).
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn


class DelegableHardSwish(nn.Module):
    """hard_swish(x) = x * relu6(x + 3) / 6, in the op order that stays ADD + MUL in TFLite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Order matters: relu6(x + 3) first, then * x, then * (1/6). Other orders are
        # pattern-matched by the converter back into HARD_SWISH (float-only in XNNPACK).
        return F.relu6(x + 3.0) * x * (1.0 / 6.0)


class DelegableHardSigmoid(nn.Module):
    """hard_sigmoid(x) = relu6(x + 3) / 6, as ADD (fused RELU6) + MUL."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) * (1.0 / 6.0)


def _replacement_types() -> dict[type, type]:
    """Module type -> its delegable form: torch's and timm's hard activations."""
    table: dict[type, type] = {nn.Hardswish: DelegableHardSwish, nn.Hardsigmoid: DelegableHardSigmoid}
    try:  # timm's own versions, used where torch lacks the native ones
        from timm.layers import activations, activations_me

        table.update({activations.HardSwish: DelegableHardSwish, activations.HardSigmoid: DelegableHardSigmoid,
                      activations_me.HardSwishMe: DelegableHardSwish,
                      activations_me.HardSigmoidMe: DelegableHardSigmoid})
    except ImportError:  # timm without them: the torch modules are what it builds
        pass
    return table


def count_rewrites(module: nn.Module) -> Counter:
    """How many modules `make_delegable` would replace, by type name (empty: nothing to do).

    Args:
        module: a torch module.

    Returns:
        Counter of replaced type names, e.g. {"Hardswish": 21, "Hardsigmoid": 8}.
    """
    table = _replacement_types()
    return Counter(type(m).__name__ for m in module.modules() if type(m) in table)


def make_delegable(module: nn.Module) -> nn.Module:
    """A copy of `module` whose hard-swish / hard-sigmoid run as int8-delegable ops.

    The original is left untouched (deep copy): its training state, hooks and weights
    stay as the caller has them.

    Args:
        module: a torch module (typically a timm backbone, or backbone + head).

    Returns:
        The rewritten copy in eval mode, numerically equal to `module` in float32 up to
        rounding (about 1e-7 relative).
    """
    table = _replacement_types()
    rewritten = copy.deepcopy(module)
    for parent in list(rewritten.modules()):
        for name, child in list(parent.named_children()):
            new = table.get(type(child))
            if new is not None:
                setattr(parent, name, new())
    return rewritten.eval()
