"""Softmax regression for the head, in numpy: class-balanced, anchored, early-stopped.

The L2 term pulls toward the current head rather than toward zero, so a handful of local
images nudges the head instead of replacing what the factory learned from thousands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FitConfig:
    l2: float = 1e-1  # pull toward the anchor head, per weight
    lr: float = 1e-3  # Adam step: each moves every weight by up to ~lr, so keep it small
    max_steps: int = 500
    patience: int = 40  # steps without a better held-out loss before stopping


@dataclass(frozen=True)
class FitResult:
    weight: np.ndarray
    bias: np.ndarray
    steps: int
    best_step: int
    val_loss: float


def _balanced_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = 1.0 / (counts[present] * present.sum())
    return w[y]  # sums to 1


def _loss_grad(w, b, x, y, sw, anchor_w, anchor_b, l2):
    z = x @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    ce = -np.log(np.maximum(p[np.arange(n), y], 1e-12))
    dz = p
    dz[np.arange(n), y] -= 1.0
    dz *= sw[:, None]
    dw, db = dz.T @ x, dz.sum(axis=0)
    dw += l2 * (w - anchor_w)
    db += l2 * (b - anchor_b)
    loss = float(sw @ ce + 0.5 * l2 * (np.sum((w - anchor_w) ** 2) + np.sum((b - anchor_b) ** 2)))
    return loss, dw, db


def _ce(w, b, x, y, sw) -> float:
    z = x @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-(sw * logp[np.arange(len(y)), y]).sum())


def fit_softmax(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                anchor_w: np.ndarray, anchor_b: np.ndarray, cfg: FitConfig = FitConfig()) -> FitResult:
    """Full-batch Adam from the anchor head; keeps the step with the lowest held-out loss.

    Deterministic for given inputs (the caller's seed decides the split).
    """
    x, x_val = x.astype(np.float64), x_val.astype(np.float64)
    # Only the classes the local data shows take part: the softmax runs over them and only
    # their rows move. A class with no local images keeps its row and is never pushed down
    # for not appearing, which would wreck it for everyone else's data.
    present = np.unique(y)
    remap = np.full(anchor_w.shape[0], -1)
    remap[present] = np.arange(len(present))
    y, y_val = remap[np.asarray(y, np.int64)], remap[np.asarray(y_val, np.int64)]
    num_classes = len(present)
    sw, sw_val = _balanced_weights(y, num_classes), _balanced_weights(y_val, num_classes)
    w, b = anchor_w[present].astype(np.float64), anchor_b[present].astype(np.float64)
    aw, ab = w.copy(), b.copy()
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    best = (_ce(w, b, x_val, y_val, sw_val), 0, w.copy(), b.copy())
    step = 0
    for step in range(1, cfg.max_steps + 1):
        _, dw, db = _loss_grad(w, b, x, y, sw, aw, ab, cfg.l2)
        for i, (param, g) in enumerate(((w, dw), (b, db))):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            param -= cfg.lr * (m[i] / (1 - beta1 ** step)) / (np.sqrt(v[i] / (1 - beta2 ** step)) + eps)
        val = _ce(w, b, x_val, y_val, sw_val)
        if val < best[0] - 1e-6:
            best = (val, step, w.copy(), b.copy())
        elif step - best[1] >= cfg.patience:
            break
    weight, bias = anchor_w.astype(np.float32).copy(), anchor_b.astype(np.float32).copy()
    weight[present], bias[present] = best[2], best[3]
    return FitResult(weight, bias, step, best[1], best[0])
