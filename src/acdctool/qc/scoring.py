"""How well QC predicts quality: AUC for detecting bad masks, Spearman and MAE against true Dice.

A *bad* slice has mean Dice below :data:`SLICE_THRESHOLD` (0.8), a bad patient below
:data:`PATIENT_THRESHOLD` (0.85), by the mean of its slices' Dice or by its volume Dice
(:data:`LEVELS`). The AUC is the probability that a random bad item scores
worse than a random good one (ties count half), computed from ranks (Mann–Whitney U); a
predicted Dice scores worse when lower, a signal in the direction of
:data:`acdctool.qc.features.SIGNALS`. Spearman is between the predicted (or oriented)
value and the true Dice; MAE is ``mean |predicted − true|`` (predicted Dice only).

Example:
    >>> auc(np.array([0.9, 0.1, 0.8, 0.3]), np.array([True, False, True, False]))
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = ["SLICE_THRESHOLD", "PATIENT_THRESHOLD", "LEVELS", "auc", "spearman", "mae", "score_level"]

SLICE_THRESHOLD = 0.8
PATIENT_THRESHOLD = 0.85
LEVELS = {
    "slice": "slices",
    "patient": "patients, mean slice Dice",
    "patient_volume": "patients, volume Dice",
}
"""Levels a QC is scored at, as score dicts name them → words for reports. A patient's
*volume* Dice is the ACDC challenge's (3D Dice per volume, :mod:`acdctool.qc.volume_dice`)."""


def auc(score: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """Area under the ROC curve of ``score`` for detecting ``positive`` items (NaN if one class is empty).

    Args:
        score: ``(N,)`` higher means more likely positive.
        positive: ``(N,)`` bool.
    """
    s = np.asarray(score, np.float64)
    pos = np.asarray(positive, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # average ranks: ties count half
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``); NaN when either side is constant."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def mae(pred: npt.ArrayLike, true: npt.ArrayLike) -> float:
    """Mean absolute error (NaN for no items)."""
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    return float(np.abs(p - t).mean()) if len(p) else float("nan")


def score_level(
    true: np.ndarray,
    threshold: float,
    predicted: np.ndarray | None = None,
    signals: Mapping[str, tuple[np.ndarray, int]] | None = None,
) -> dict[str, Any]:
    """Scores of one level (slices or patients).

    Args:
        true: ``(N,)`` true mean Dice.
        threshold: items below it are the bad ones to detect.
        predicted: ``(N,)`` predicted Dice (the combination), when there is one.
        signals: name → (values ``(N,)``, direction: +1 higher is worse, −1 higher is better).

    Returns:
        ``{"n", "n_bad", "threshold", "predicted": {"auc", "spearman", "mae"} (when given),
        "signals": {name: {"auc", "spearman"}}}``; Spearman of a signal is taken with its
        direction applied, so every good predictor has a positive one.
    """
    true = np.asarray(true, np.float64)
    bad = true < threshold
    out: dict[str, Any] = {"n": int(len(true)), "n_bad": int(bad.sum()), "threshold": threshold}
    if predicted is not None:
        p = np.asarray(predicted, np.float64)
        out["predicted"] = {"auc": auc(-p, bad), "spearman": spearman(p, true), "mae": mae(p, true)}
    out["signals"] = {
        name: {"auc": auc(sign * np.asarray(v, np.float64), bad), "spearman": spearman(-sign * np.asarray(v), true)}
        for name, (v, sign) in (signals or {}).items()
    }
    return out
