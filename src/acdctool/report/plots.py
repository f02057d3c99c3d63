"""The report's figures as PNG files: Dice violins, delta histogram, scatter, montages.

Label colours are fixed across every figure: RV blue, MYO green, LV red (over grey images);
montages carry a key of them. Legends sit outside the axes, never over the data.
:func:`violin_figure` and :func:`montage_figure` return the figure instead of writing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from acdctool.conventions import CLASSES, FOREGROUND, LABELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABEL_RGB = np.array([[0, 0, 0], [0.15, 0.45, 1.0], [0.1, 0.8, 0.2], [0.95, 0.15, 0.1]])
"""RGB colour of labels 0..3 (background, RV, MYO, LV)."""


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def violin(tables: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """Violin plot of per-slice Dice per class (one violin per table, e.g. before/after)."""
    return _save(violin_figure(tables), path)


def violin_figure(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """The figure of :func:`violin`; its legend, right of the axes, gives each table's n and mean.

    n counts the slices with a Dice value; a class whose count differs (NaN rows) shows its own
    n under its name. An empty table draws no violins, only its legend entry.
    """
    plt = _plt()
    names = [*CLASSES, "mean"]
    fig, ax = plt.subplots(figsize=(2.2 * len(names) + 1, 4), dpi=110)
    width = 0.8 / max(len(tables), 1)
    counts = {label: [int(table[f"dice_{n}"].notna().sum()) for n in names] for label, table in tables.items()}
    for t, (label, table) in enumerate(tables.items()):
        pos = np.arange(len(names)) + (t - (len(tables) - 1) / 2) * width
        data = [table[f"dice_{n}"].dropna().to_numpy() for n in names]
        drawn = [j for j, d in enumerate(data) if d.size]
        if drawn:
            parts = ax.violinplot([data[j] for j in drawn], positions=pos[drawn], widths=width * 0.9, showmedians=True)
            for body in parts["bodies"]:
                body.set_facecolor(f"C{t}")
                body.set_alpha(0.6)
        n = counts[label][-1]
        mean = f"mean Dice {table['dice_mean'].mean():.4f}" if n else "no slices"
        ax.plot([], [], color=f"C{t}", lw=6, alpha=0.6, label=f"{label}\nn = {n:,}, {mean}")
    ticks = []
    for j, name in enumerate(names):
        tick = name.upper() if name != "mean" else "mean"
        own = [c[j] for c in counts.values()]
        if any(k != c[-1] for k, c in zip(own, counts.values(), strict=True)):
            tick += "\n" + " / ".join(f"n = {k:,}" for k in own)
        ticks.append(tick)
    ax.set_xticks(np.arange(len(names)), ticks)
    ax.set_ylabel("Dice per slice")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def delta_histogram(deltas: pd.DataFrame, threshold: float, path: Path) -> Path:
    """Histogram of per-row Δ mean Dice (after − before), unchanged band marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    d = deltas["dice_mean_delta"].to_numpy()
    ax.hist(d, bins=np.linspace(min(d.min(), -0.05), max(d.max(), 0.05), 61) if len(d) else 10, color="C0")
    ax.axvspan(-threshold, threshold, color="grey", alpha=0.2, label=f"unchanged (|Δ| ≤ {threshold})")
    ax.set_yscale("log")
    ax.set_xlabel("Δ mean Dice (after − before)")
    ax.set_ylabel("slices")
    ax.legend(fontsize=8)
    return _save(fig, path)


def scatter(deltas: pd.DataFrame, path: Path) -> Path:
    """Mean Dice after vs before, one point per row, with R² against the identity line."""
    plt = _plt()
    b, a = deltas["dice_mean_before"].to_numpy(), deltas["dice_mean_after"].to_numpy()
    r2 = r_squared(b, a)
    fig, ax = plt.subplots(figsize=(4.6, 4.6), dpi=110)
    colours = np.where(a - b > 0, "C2", np.where(a - b < 0, "C3", "C7"))
    ax.scatter(b, a, s=6, c=colours, alpha=0.7, linewidths=0)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("mean Dice before")
    ax.set_ylabel("mean Dice after")
    ax.set_title(f"R² (vs identity) = {r2:.4f}" if np.isfinite(r2) else "R² undefined")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, path)


def r_squared(before: np.ndarray, after: np.ndarray) -> float:
    """Coefficient of determination of ``after`` by ``before`` (1 − SS_res / SS_tot, identity fit)."""
    ss_tot = float(((after - after.mean()) ** 2).sum())
    return 1.0 - float(((after - before) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def overlay(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """RGB (H, W, 3) of a [0, 1] image with labels blended in their fixed colours."""
    grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    if mask is None:
        return grey
    colour = LABEL_RGB[mask]
    on = (mask > 0)[..., None]
    return np.clip(np.where(on, (1 - alpha) * grey + alpha * colour, grey), 0, 1)


def montage(
    images: np.ndarray,
    columns: Mapping[str, np.ndarray],
    titles: Sequence[str],
    path: Path,
    *,
    empty: str = "no slices",
) -> Path:
    """One row per slice: the image, then each named mask column as a coloured overlay.

    Args:
        images: (K, H, W) in [0, 1].
        columns: name → (K, H, W) label maps (e.g. ground truth, before, after).
        titles: one caption per row (e.g. patient, phase, slice, Dice before → after).
        path: the PNG to write.
        empty: what a montage without rows (K = 0) says instead.
    """
    return _save(montage_figure(images, columns, titles, empty=empty), path)


def montage_figure(
    images: np.ndarray, columns: Mapping[str, np.ndarray], titles: Sequence[str], *, empty: str = "no slices"
) -> Figure:
    """The figure of :func:`montage`, with a colour key of the labels below the panels.

    Without rows it is a small figure that says ``empty``.
    """
    plt = _plt()
    k, ncol = len(images), len(columns) + 1
    if k == 0:
        fig, ax = plt.subplots(figsize=(3.2, 0.9), dpi=100)
        ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=10, color="0.3")
        ax.axis("off")
        return fig
    fig, axes = plt.subplots(k, ncol, figsize=(2.1 * ncol, 2.2 * k), dpi=100, squeeze=False)
    for i in range(k):
        panels = [("image", overlay(images[i], None))] + [(n, overlay(images[i], m[i])) for n, m in columns.items()]
        for j, (name, rgb) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
        axes[i, 0].set_ylabel(titles[i], fontsize=7)
    from matplotlib.patches import Patch

    key = [Patch(facecolor=LABEL_RGB[label], edgecolor="none", label=LABELS[label]) for label in FOREGROUND]
    fig.tight_layout()
    fig.legend(handles=key, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(key), fontsize=8, frameon=False)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    if not fig.legends:  # a figure legend (the montage key) is placed after the layout
        fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # keeps legends placed outside the axes
    _plt().close(fig)
    return path
