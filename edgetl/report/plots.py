"""PNG plots for the build report: a confusion-matrix heatmap and an accuracy-vs-latency
Pareto plot, returned as bytes so the HTML report can inline them (matplotlib, no pyplot)."""

from __future__ import annotations

import io
import math

# 80 dpi: the report is read on a screen; a 5.6 x 4 in figure is 448 x 320 px, 20-40 KB of
# PNG, and the report of two 10-class targets is about 150 KB (tests/test_report_html.py).
DPI = 80


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _fit(text: str, width: int = 18) -> str:
    """Long labels shortened with an ellipsis, so the axes keep their room."""
    return text if len(text) <= width else text[:width - 1] + "…"


def confusion_png(confusion: list[list[int]], labels: list[str], title: str) -> bytes:
    """Heatmap of a confusion matrix, rows = true class, columns = predicted; counts in cells.

    Args:
        confusion: K x K counts (metrics JSON `confusion`).
        labels: the K class names, in the same order.
        title: drawn above the matrix.

    Returns:
        PNG bytes. Colour is the share of the true class's images (row-normalised), so a
        small class's mistakes show as clearly as a large one's.
    """
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.float64)
    k = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = min(6.5, max(3.4, 0.36 * k + 2.0))
    fig = Figure(figsize=(side + 0.9, side))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    names = [_fit(str(label)) for label in labels]
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names), default=0) > 3 else 0, ha="right"
                  if max(map(len, names), default=0) > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if k <= 20:  # beyond 20 classes the numbers would be too small to read
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _png(fig)


def pareto_png(selection: list[dict], budget_ms: float | None, selected: str | None, title: str) -> bytes:
    """Accuracy against latency for every candidate of one target.

    Args:
        selection: summary.json's per-target `selection` rows (candidate, top1, latency_ms,
            latency_source, kept, why); rows without both numbers are left out of the plot.
        budget_ms: the latency budget, drawn as a vertical line (None: no line).
        selected: the chosen candidate's name, drawn larger with a ring.
        title: drawn above the plot.

    Returns:
        PNG bytes. Kept candidates are filled circles, dropped ones grey crosses.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.subplots()
    points = [r for r in selection if _number(r.get("top1")) and _number(r.get("latency_ms"))]
    sources = sorted({str(r.get("latency_source") or "host") for r in points}) or ["host"]
    for row in points:
        x, y = float(row["latency_ms"]), 100 * float(row["top1"])
        if row.get("kept"):
            ax.scatter([x], [y], s=55, color="#2b6cb0", zorder=3)
        else:
            ax.scatter([x], [y], s=55, marker="x", color="0.55", zorder=3)
        if row.get("candidate") == selected:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="#d97706", linewidths=2.2, zorder=4)
    if budget_ms is not None and _number(budget_ms):
        ax.axvline(float(budget_ms), color="#c53030", linestyle="--", linewidth=1.2,
                   label=f"budget {float(budget_ms):g} ms")
    # Legend entries for the three kinds of point, drawn once each off-screen.
    ax.scatter([], [], s=55, color="#2b6cb0", label="kept")
    ax.scatter([], [], s=55, marker="x", color="0.55", label="dropped")
    ax.scatter([], [], s=120, facecolors="none", edgecolors="#d97706", linewidths=2, label="selected")
    if points:
        xs = [float(r["latency_ms"]) for r in points] + ([float(budget_ms)] if _number(budget_ms) else [])
        ys = [100 * float(r["top1"]) for r in points]
        span = max(xs) - min(xs) or max(xs) or 1.0
        ax.set_xlim(max(0.0, min(xs) - 0.15 * span), max(xs) + 0.15 * span)
        low, high = min(ys), max(ys)
        pad = max(0.5, 0.15 * (high - low))
        ax.set_ylim(low - pad, min(100.0 + pad / 4, high + pad))
        middle = sum(ax.get_xlim()) / 2
        for row in points:  # names point away from the nearer edge, so none is cut off
            x, right = float(row["latency_ms"]), float(row["latency_ms"]) > middle
            ax.annotate(_fit(str(row.get("candidate", "?")), 32), (x, 100 * float(row["top1"])),
                        xytext=(-7 if right else 7, 5), textcoords="offset points", fontsize=8,
                        ha="right" if right else "left")
    else:
        ax.text(0.5, 0.5, "no candidate has both an accuracy and a latency", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set(xlabel=f"latency, median ms per image ({' / '.join(sources)})", ylabel="validation top-1, %",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _png(fig)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
