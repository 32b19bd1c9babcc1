"""AdaBN: re-estimate the backbone's BatchNorm running statistics on target images.

Only `running_mean` and `running_var` change (tests/test_adapt.py checks every other tensor
of the state dict bit for bit), so the adapted backbone exports like any other.

Two sources of the statistics the head expects:
  "imagenet" (plain AdaBN, Li et al. 2016): each layer normalises the target's features to
      zero mean and unit variance. The head, though, was trained on features normalised by
      the *ImageNet* statistics, which the user's clean images do not have either.
  "anchored": each layer maps the target's per-channel mean/std onto the mean/std the
      *source* (the run's training images) has at that layer in the frozen model, so the
      head sees target features distributed as the source features it was trained on.
      Same running-stat edit: running_mean' = m_t - (m_s - m_I) s_t / s_s,
      running_std' = s_t s_I / s_s (std = sqrt(var + eps)).
      Measured on the simulated cheap camera (docs/benchmarks.md): anchored 76.5 % against
      plain 60.1 % on hymenoptera (source-only 59.3 %), 62.9 % against 16.1 % on the digits
      (source-only 37.1 %). `adabn` is the anchored one.

Like AdaBN, the target pass normalises each batch with that batch's statistics (layers
downstream see adapted features), accumulating the layer's input moments over all batches
for the final running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl.core.preprocess import Preprocess
from edgetl.core.progress import track
from edgetl.transfer.cpu import as_input, channels_last, chunks

SOURCES = ("anchored", "imagenet")


def bn_layers(module: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}


class _Moments:
    """Per-channel mean and variance of a layer's input over every pixel seen, merged batch by
    batch (per-batch moments in float32 by torch, totals in float64: converting whole
    activation maps to float64 made the pass several times slower than the forward itself)."""

    def __init__(self, channels: int):
        self.mean = np.zeros(channels)
        self.sq = np.zeros(channels)  # mean of x^2
        self.count = 0

    def add(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Merge one batch; returns the batch's own (mean, var)."""
        var, mean = torch.var_mean(x.detach(), dim=(0, 2, 3), unbiased=False)
        mean, var = mean.double().numpy(), var.double().numpy()
        n = x.shape[0] * x.shape[2] * x.shape[3]
        total = self.count + n
        self.mean += (mean - self.mean) * (n / total)
        self.sq += (var + mean * mean - self.sq) * (n / total)
        self.count = total
        return mean, var

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean.copy(), np.maximum(self.sq - self.mean * self.mean, 0.0)


def _forward_all(module: nn.Module, paths: list[Path], preprocess: Preprocess, label: str) -> None:
    channels_last(module).eval()
    with track(label, len(paths)) as task, torch.no_grad():
        for part in chunks(len(paths)):
            module(as_input(torch.from_numpy(preprocess.batch(paths[part]))))
            task.advance(part.stop - part.start)


def layer_moments(module: nn.Module, paths: list[Path], preprocess: Preprocess,
                  label: str = "BatchNorm statistics of source images") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (mean, var)} of every BatchNorm layer's input over `paths`, the model unchanged."""
    layers = bn_layers(module)
    moments = {name: _Moments(bn.num_features) for name, bn in layers.items()}
    def pre_hook(bn, inp, name):
        moments[name].add(inp[0])  # returns nothing: a pre-hook's return value would replace the input

    hooks = [bn.register_forward_pre_hook(lambda m, inp, name=name: pre_hook(m, inp, name))
             for name, bn in layers.items()]
    try:
        _forward_all(module, paths, preprocess, label)
    finally:
        for h in hooks:
            h.remove()
    return {name: m.mean_var() for name, m in moments.items()}


def _running(bn: nn.BatchNorm2d, t_mean, t_var, s_mean, s_var) -> tuple[torch.Tensor, torch.Tensor]:
    """The running (mean, var) that map target moments onto the source's at this layer."""
    eps = bn.eps
    i_mean = bn.running_mean.double().numpy()
    i_std = np.sqrt(bn.running_var.double().numpy() + eps)
    t_std, s_std = np.sqrt(t_var + eps), np.sqrt(s_var + eps)
    std = t_std * i_std / s_std
    mean = t_mean - (s_mean - i_mean) * t_std / s_std
    var = np.maximum(std * std - eps, 0.0)
    dtype = bn.running_mean.dtype
    return torch.from_numpy(mean).to(dtype), torch.from_numpy(var).to(dtype)


@dataclass
class BatchNormShift:
    """The running statistics before (`original`) and after AdaBN (`adapted`), per layer."""

    original: dict[str, tuple[torch.Tensor, torch.Tensor]]
    adapted: dict[str, tuple[torch.Tensor, torch.Tensor]]
    info: dict

    def apply(self, module: nn.Module, strength: float = 1.0) -> None:
        """Write the statistics `strength` of the way from the original (0) to the adapted (1):
        means and variances interpolated linearly, nothing else touched."""
        with torch.no_grad():
            for name, bn in bn_layers(module).items():
                (m0, v0), (m1, v1) = self.original[name], self.adapted[name]
                bn.running_mean.copy_(m0 + strength * (m1 - m0))
                bn.running_var.copy_(v0 + strength * (v1 - v0))


def adapt_batchnorm(module: nn.Module, paths: list[Path], preprocess: Preprocess,
                    source: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> BatchNormShift:
    """Estimate every BatchNorm layer's target running statistics from the images `paths`.

    Args:
        module: the backbone (left with its original statistics; `BatchNormShift.apply` writes
            the adapted ones).
        paths: unlabeled target images.
        preprocess: the run's preprocessing.
        source: `layer_moments` of the source images ("anchored"); None for plain AdaBN
            (target features to zero mean, unit variance).

    Returns:
        BatchNormShift; its `info`: {"layers", "images", "statistics": "anchored"|"imagenet"}.
    """
    layers = bn_layers(module)
    original = {name: (bn.running_mean.detach().clone(), bn.running_var.detach().clone())
                for name, bn in layers.items()}
    imagenet = {name: (m.double().numpy(), v.double().numpy()) for name, (m, v) in original.items()}
    anchor = source or imagenet
    moments = {name: _Moments(bn.num_features) for name, bn in layers.items()}

    def pre_hook(bn, inp, name):
        # Normalise this batch with its own statistics (as AdaBN's train-mode pass does), mapped
        # onto the anchor's; _running reads the layer's original statistics, restored first.
        b_mean, b_var = moments[name].add(inp[0])
        bn.running_mean.copy_(original[name][0])
        bn.running_var.copy_(original[name][1])
        mean, var = _running(bn, b_mean, b_var, *anchor[name])
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)

    hooks = [bn.register_forward_pre_hook(lambda m, inp, name=name: pre_hook(m, inp, name))
             for name, bn in layers.items()]
    try:
        _forward_all(module, paths, preprocess, "AdaBN: BatchNorm statistics of target images")
    finally:
        for h in hooks:
            h.remove()
    adapted = {}
    with torch.no_grad():
        for name, bn in layers.items():
            bn.running_mean.copy_(original[name][0])
            bn.running_var.copy_(original[name][1])
            adapted[name] = _running(bn, *moments[name].mean_var(), *anchor[name])
    return BatchNormShift(original, adapted, {"layers": len(layers), "images": len(paths),
                                              "statistics": "anchored" if source else "imagenet"})
