"""Training curve PNG: loss and selection-split accuracy per epoch, one panel each."""

from __future__ import annotations

import math
from pathlib import Path


def _score(row: dict, name: str) -> float:
    """A history row's `selection_<name>`; runs written before the selection split recorded
    the same numbers as `val_<name>` (then scored on the validation split)."""
    return row[f"selection_{name}"] if f"selection_{name}" in row else row[f"val_{name}"]


def plot_history(history: list[dict], path: Path, title: str, reported: float | None = None) -> Path:
    """Draw the history of a run: losses on the left, the accuracies early stopping saw on the right.

    Args:
        history: metrics.json's `history` rows (phase, epoch, split, train_loss,
            selection_loss, selection_top1, selection_balanced_accuracy, kept); older
            `val_*` rows are drawn the same way.
        path: the PNG to write.
        title: the figure title.
        reported: the validation top-1 metrics.json reports for the kept model, drawn as a
            horizontal line so it is not mistaken for a point of the curves.

    Returns:
        `path`. The epoch whose weights were kept (the last row marked `kept`) is marked on
        both panels.
    """
    # Figure without pyplot: no GUI backend, no global state, and a faster import.
    from matplotlib.figure import Figure

    split = next((h.get("split") for h in history if h.get("split")), None) or "val"
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    # Phases run one after another (linear probe, then partial/full): each continues the x axis.
    start, kept_x, kept = 0, None, None
    for phase in dict.fromkeys(h["phase"] for h in history):
        rows = [h for h in history if h["phase"] == phase]
        x = [start + i for i in range(len(rows))]
        dots = {"marker": "o", "markersize": 3} if len(rows) < 15 else {}  # a 1-epoch phase is no line
        ax_loss.plot(x, [h["train_loss"] for h in rows], label=f"{phase} train", **dots)
        ax_loss.plot(x, [_score(h, "loss") for h in rows], "--", label=f"{phase} {split}", **dots)
        ax_acc.plot(x, [_score(h, "top1") for h in rows], label=f"{phase} {split} top1", **dots)
        ax_acc.plot(x, [_score(h, "balanced_accuracy") for h in rows], ":", label=f"{phase} {split} balanced",
                    **dots)
        for xi, h in zip(x, rows):
            if h.get("kept"):
                kept_x, kept = xi, h  # the last phase's kept epoch wins
        start += len(rows)
    ax_loss.set(xlabel="epoch (phases in sequence)", ylabel="loss", title="loss")
    # Zoom to the accuracies reached: on a 0-1 axis a one-image difference between epochs
    # (what decides which one is kept) is invisible.
    lowest = min(min(_score(h, "top1"), _score(h, "balanced_accuracy")) for h in history)
    if reported is not None:
        lowest = min(lowest, reported)
    floor = max(0.0, math.floor((lowest - 0.02) * 20) / 20)
    ax_acc.set(xlabel="epoch (phases in sequence)", ylabel="accuracy",
               title=f"{split} split accuracy (early stopping)", ylim=(floor, 1.0 + (1.0 - floor) * 0.02))
    if reported is not None:
        ax_acc.axhline(reported, color="0.2", linewidth=0.8, linestyle="--",
                       label=f"reported: val top1 {reported:.4f} (kept model)")
    for ax in (ax_loss, ax_acc):
        if kept is not None:
            ax.axvline(kept_x, color="0.4", linewidth=0.8, linestyle="-.",
                       label=f"kept: {kept['phase']} epoch {kept['epoch']} ({split} top1 {_score(kept, 'top1'):.4f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    # Fixed margins for this fixed figure size: tight_layout would draw the figure once more
    # just to measure it (a third of the plotting time).
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.86, wspace=0.18)
    fig.savefig(path, dpi=110)
    return path
