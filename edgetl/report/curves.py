"""Training curve PNG: loss and validation accuracy per epoch, one panel each."""

from __future__ import annotations

import math
from pathlib import Path


def plot_history(history: list[dict], path: Path, title: str) -> Path:
    """The epoch whose weights were kept (the last row marked `kept`) is marked on both panels."""
    # Figure without pyplot: no GUI backend, no global state, and a faster import.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    # Phases run one after another (linear probe, then partial/full): each continues the x axis.
    start, kept_x, kept = 0, None, None
    for phase in dict.fromkeys(h["phase"] for h in history):
        rows = [h for h in history if h["phase"] == phase]
        x = [start + i for i in range(len(rows))]
        dots = {"marker": "o", "markersize": 3} if len(rows) < 15 else {}  # a 1-epoch phase is no line
        ax_loss.plot(x, [h["train_loss"] for h in rows], label=f"{phase} train", **dots)
        ax_loss.plot(x, [h["val_loss"] for h in rows], "--", label=f"{phase} val", **dots)
        ax_acc.plot(x, [h["val_top1"] for h in rows], label=f"{phase} val top1", **dots)
        ax_acc.plot(x, [h["val_balanced_accuracy"] for h in rows], ":", label=f"{phase} val balanced", **dots)
        for xi, h in zip(x, rows):
            if h.get("kept"):
                kept_x, kept = xi, h  # the last phase's kept epoch wins
        start += len(rows)
    ax_loss.set(xlabel="epoch (phases in sequence)", ylabel="loss", title="loss")
    # Zoom to the accuracies reached: on a 0-1 axis a one-image difference between epochs
    # (what decides which one is kept) is invisible.
    lowest = min(min(h["val_top1"], h["val_balanced_accuracy"]) for h in history)
    floor = max(0.0, math.floor((lowest - 0.02) * 20) / 20)
    ax_acc.set(xlabel="epoch (phases in sequence)", ylabel="accuracy", title="validation accuracy",
               ylim=(floor, 1.0 + (1.0 - floor) * 0.02))
    for ax in (ax_loss, ax_acc):
        if kept is not None:
            ax.axvline(kept_x, color="0.4", linewidth=0.8, linestyle="-.",
                       label=f"kept: {kept['phase']} epoch {kept['epoch']} (top1 {kept['val_top1']:.4f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    # Fixed margins for this fixed figure size: tight_layout would draw the figure once more
    # just to measure it (a third of the plotting time).
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.86, wspace=0.18)
    fig.savefig(path, dpi=110)
    return path
