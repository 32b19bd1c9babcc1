"""Running the backbone fast on a CPU: channels-last tensors in chunks of 16 images.

oneDNN's convolutions (depthwise ones above all) run faster on NHWC than on NCHW tensors.
And a 32-image batch at 224 px makes activations large enough that glibc maps and unmaps
fresh pages for them on every layer: half the time went to the kernel zeroing memory.
16-image chunks stay out of that. Measured by benchmarks/bench_cpu_forward.py (Lite0,
2 vCPU, docs/benchmarks.md): forward 26.0 -> 8.5 ms/img, partial training step
24.0 -> 14.4, full 65.8 -> 37.3.

Training keeps its batch size: a batch runs as chunks whose gradients add up to the
batch's. That is exact here because BatchNorm is frozen (eval mode) in every strategy,
so no layer sees the batch as a whole.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK = 16


def channels_last(module: nn.Module) -> nn.Module:
    """Convert in place (parameters keep their identity, so optimisers still hold them)."""
    return module.to(memory_format=torch.channels_last)


def as_input(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def chunks(n: int, size: int = CHUNK):
    """Slices covering range(n) in steps of `size`."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]
