"""The QC figure: predicted against true Dice when ground truth exists, else a histogram.

Example:
    >>> qc_figure(np.array([0.9, 0.5]), np.array([0.95, 0.4]), 0.8, "predicted Dice", Path("qc.png"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from acdctool.report.plots import _plt, _save

__all__ = ["qc_figure"]


def qc_figure(score: np.ndarray, true: np.ndarray | None, threshold: float, label: str, path: Path) -> Path:
    """Write the QC figure.

    Args:
        score: per-slice predicted Dice (or uncalibrated risk).
        true: per-slice true Dice, or None (no ground truth: histogram of ``score``).
        threshold: the flag threshold (a line on the figure).
        label: what ``score`` is (axis label).
        path: PNG to write.
    """
    plt = _plt()
    score = np.asarray(score, np.float64)
    if true is None:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        ax.hist(score, bins=np.linspace(0, 1, 41), color="C0")
        ax.axvline(threshold, color="C3", ls="--", lw=1, label=f"flag threshold {threshold:g}")
        ax.set_xlabel(label)
        ax.set_ylabel("slices")
        ax.set_title(f"{len(score):,} slices (no ground truth)")
        ax.legend(fontsize=8)
        return _save(fig, path)
    true = np.asarray(true, np.float64)
    fig, ax = plt.subplots(figsize=(4.8, 4.6), dpi=110)
    ax.scatter(score, true, s=5, alpha=0.5, linewidths=0, color="C0")
    ax.axhline(0.8, color="grey", ls=":", lw=0.8)
    ax.axvline(threshold, color="C3", ls="--", lw=1, label=f"flag threshold {threshold:g}")
    if label == "predicted Dice":
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        mae = float(np.abs(score - true).mean()) if len(score) else float("nan")
        ax.set_title(f"{len(score):,} slices, MAE {mae:.3f}")
    else:
        ax.set_title(f"{len(score):,} slices (uncalibrated)")
    ax.set_xlabel(label)
    ax.set_ylabel("true mean Dice")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
