"""Training curve PNG: loss and validation accuracy per epoch, one panel each."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path, title: str) -> Path:
    """The epoch whose weights were kept (the last row marked `kept`) is marked on both panels."""
    # Figure without pyplot: no GUI backend, no global state, and a faster import.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    phases = list(dict.fromkeys(h["phase"] for h in history))
    for phase in phases:
        rows = [h for h in history if h["phase"] == phase]
        x = [h["epoch"] for h in rows]
        ax_loss.plot(x, [h["train_loss"] for h in rows], label=f"{phase} train")
        ax_loss.plot(x, [h["val_loss"] for h in rows], "--", label=f"{phase} val")
        ax_acc.plot(x, [h["val_top1"] for h in rows], label=f"{phase} val top1")
        ax_acc.plot(x, [h["val_balanced_accuracy"] for h in rows], ":", label=f"{phase} val balanced")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1.02))
    kept = [h for h in history if h.get("kept")]
    for ax in (ax_loss, ax_acc):
        if kept:
            ax.axvline(kept[-1]["epoch"], color="0.4", linewidth=0.8, linestyle="-.",
                       label=f"kept: {kept[-1]['phase']} epoch {kept[-1]['epoch']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
