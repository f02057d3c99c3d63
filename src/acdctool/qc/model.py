"""The QC combination: ridge regression of Dice on the features, calibrated by isotonic regression.

A :class:`LinearIsotonic` model standardises the features with the training means and
standard deviations, scores them linearly (ridge, penalty ``alpha`` on standardised
coefficients, intercept free) and maps the score to a predicted Dice with a monotone
piecewise-linear function fitted by isotonic regression (pool adjacent violators, interpolated
between block centres, clamped to [0, 1]).

The isotonic map must learn how the *unseen* score relates to Dice, so it is fitted on
cross-fitted scores: :func:`fit` splits the training patients into parts (their folds),
scores each part with a ridge fitted on the others, fits the isotonic map on those scores,
then refits the ridge on everything. :func:`cross_validate` runs this out of fold (one
outer fold held out at a time), so every prediction it returns comes from a model that never
saw the patient. Numpy only.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 2)); y = 1 / (1 + np.exp(-x[:, 0]))
    >>> parts = np.repeat(np.arange(5), 40)
    >>> oof = cross_validate(x, y, parts, parts)
    >>> bool(np.corrcoef(oof, y)[0, 1] > 0.95)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LinearIsotonic", "fit", "cross_validate", "fit_ridge", "isotonic", "isotonic_median", "parts_of"]

DEFAULT_ALPHA = 1.0


@dataclass
class LinearIsotonic:
    """Standardise, score linearly, map the score to [0, 1] through a monotone curve.

    Attributes:
        features: names of the ``(N, F)`` columns it takes, in order.
        mean, scale: ``(F,)`` standardisation.
        coef: ``(F,)`` coefficients on standardised features; ``intercept``: score offset.
        iso_x, iso_y: increasing knots of the score → Dice map (``np.interp``, clamped).
    """

    features: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    iso_x: np.ndarray
    iso_y: np.ndarray

    def score(self, x: np.ndarray) -> np.ndarray:
        """The linear score ``(N,)`` (before the isotonic map)."""
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted Dice ``(N,)`` in [0, 1]."""
        return np.clip(np.interp(self.score(x), self.iso_x, self.iso_y), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ridge+isotonic",
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
            "isotonic": {"x": self.iso_x.tolist(), "y": self.iso_y.tolist()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearIsotonic:
        """Rebuild from :meth:`to_dict`'s output.

        Raises:
            ValueError: a field is missing or the lengths disagree.
        """
        f = list(d["features"])
        arrays = [np.asarray(d[k], np.float64) for k in ("mean", "scale", "coef")]
        iso_x, iso_y = (np.asarray(d["isotonic"][k], np.float64) for k in ("x", "y"))
        if any(a.shape != (len(f),) for a in arrays) or iso_x.shape != iso_y.shape or iso_x.size == 0:
            raise ValueError("inconsistent model: lengths of features, mean, scale, coef or isotonic knots differ")
        mean, scale, coef = arrays
        return cls(f, mean, scale, coef, float(d["intercept"]), iso_x, iso_y)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Ridge regression on standardised columns: ``(mean, scale, coef, intercept)``.

    Constant columns get scale 1 (their coefficient is then 0). ``alpha`` penalises the
    squared coefficients (not the intercept), in units of rows.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    scale = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    varies = scale > 1e-12
    scale = np.where(varies, scale, 1.0)
    z = (x - mean) / scale
    ybar = float(y.mean()) if len(y) else 0.0
    coef = np.zeros(x.shape[1])
    zv = z[:, varies]
    if zv.shape[1]:
        gram = zv.T @ zv + alpha * np.eye(zv.shape[1])
        coef[varies] = np.linalg.lstsq(gram, zv.T @ (y - ybar), rcond=None)[0]
    return mean, scale, coef, ybar


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Increasing isotonic regression of ``y`` on ``x`` (pool adjacent violators).

    Returns:
        ``(knots_x, knots_y)``: each block's mean x and mean y, increasing in both, for
        ``np.interp``. Equal x values are pooled first, so the knots' x are distinct.

    Example:
        >>> kx, ky = isotonic(np.array([0, 1, 2, 3.0]), np.array([0, 2, 1, 3.0]))
        >>> kx.tolist(), ky.tolist()
        ([0.0, 1.5, 3.0], [0.0, 1.5, 3.0])
    """
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    ux, start = np.unique(xs, return_index=True)
    w = np.diff(np.r_[start, len(xs)]).astype(np.float64)
    sy = np.add.reduceat(ys, start) if len(xs) else np.zeros(0)
    sx = ux * w
    # stack of blocks: (sum_w, sum_x, sum_y)
    bw: list[float] = []
    bx: list[float] = []
    by: list[float] = []
    for wi, xi, yi in zip(w, sx, sy, strict=True):
        bw.append(wi)
        bx.append(xi)
        by.append(yi)
        while len(bw) > 1 and by[-2] / bw[-2] >= by[-1] / bw[-1]:
            wl, xl, yl = bw.pop(), bx.pop(), by.pop()
            bw[-1] += wl
            bx[-1] += xl
            by[-1] += yl
    weights = np.asarray(bw)
    return np.asarray(bx) / weights, np.asarray(by) / weights


def isotonic_median(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Increasing isotonic regression of ``y`` on ``x`` in absolute error: block medians.

    The least-absolute-error monotone fit (pool adjacent violators with each block's median,
    the lower median for even counts). It maps a score to the conditional *median*, which is
    the point prediction that minimises the mean absolute error, where :func:`isotonic` gives
    the conditional mean (which averages correctly, e.g. over a patient's slices). Dice is
    skewed (a long tail towards 0), so the two differ.

    Returns:
        ``(knots_x, knots_y)`` as :func:`isotonic`: each block's mean x and median y.

    Example:
        >>> kx, ky = isotonic_median(np.arange(5.0), np.array([0.9, 0.9, 0.0, 0.95, 0.95]))
        >>> kx.tolist(), ky.tolist()
        ([1.0, 3.5], [0.9, 0.95])
    """
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    _, start = np.unique(xs, return_index=True)
    ends = np.r_[start[1:], len(xs)] if len(xs) else np.zeros(0, np.int64)
    sum_x: list[float] = []
    values: list[np.ndarray] = []  # each block's y, sorted

    def median(v: np.ndarray) -> float:
        return float(v[(len(v) - 1) // 2])

    for s, e in zip(start, ends, strict=True):
        sum_x.append(float(xs[s:e].sum()))
        values.append(np.sort(ys[s:e]))
        while len(values) > 1 and median(values[-2]) >= median(values[-1]):
            last, lx = values.pop(), sum_x.pop()
            values[-1] = np.sort(np.concatenate([values[-1], last]), kind="mergesort")
            sum_x[-1] += lx
    counts = np.array([len(v) for v in values], np.float64)
    return np.asarray(sum_x) / np.maximum(counts, 1), np.array([median(v) for v in values])


def parts_of(folds: np.ndarray, groups: np.ndarray, max_parts: int = 5) -> np.ndarray:
    """Cross-fitting parts: the folds when there are at least two, else groups dealt round-robin.

    Args:
        folds: ``(N,)`` fold of each row.
        groups: ``(N,)`` patient (or other group) of each row; a group never spans parts.
        max_parts: parts when falling back to groups.

    Returns:
        ``(N,)`` int part of each row.
    """
    uf = np.unique(folds)
    if len(uf) >= 2:
        return np.searchsorted(uf, folds)
    ug, inv = np.unique(groups, return_inverse=True)
    k = max(1, min(max_parts, len(ug)))
    return (np.arange(len(ug)) % k)[inv]


def fit(
    x: np.ndarray,
    y: np.ndarray,
    parts: np.ndarray,
    features: list[str] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[LinearIsotonic, np.ndarray]:
    """Fit a :class:`LinearIsotonic` model, with the isotonic map on cross-fitted scores.

    Args:
        x: ``(N, F)`` features; y: ``(N,)`` targets in [0, 1] (true Dice).
        parts: ``(N,)`` cross-fitting part of each row (patients never span parts); with a
            single part the isotonic map is fitted on in-sample scores.
        features: column names stored in the model (default ``f0``, ``f1``, ...).
        alpha: ridge penalty.

    Returns:
        ``(model, inner)``: the model and, for every row, its predicted Dice from a model that
        did not see the row's part (the cross-fitted scores through the final isotonic map):
        honest inputs for a second-level model (patients).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    names = list(features) if features is not None else [f"f{i}" for i in range(x.shape[1])]
    scores = np.empty(len(y))
    ups = np.unique(parts)
    if len(ups) < 2:
        m, s, c, b = fit_ridge(x, y, alpha)
        scores = ((x - m) / s) @ c + b
    for p in ups if len(ups) >= 2 else ():
        test = parts == p
        m, s, c, b = fit_ridge(x[~test], y[~test], alpha)
        scores[test] = ((x[test] - m) / s) @ c + b
    kx, ky = isotonic(scores, y)
    mean, scale, coef, intercept = fit_ridge(x, y, alpha)
    model = LinearIsotonic(names, mean, scale, coef, intercept, kx, ky)
    inner = np.clip(np.interp(scores, kx, ky), 0.0, 1.0)
    return model, inner


def cross_validate(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, groups: np.ndarray, alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """Out-of-fold predictions: each outer fold predicted by :func:`fit` on the others.

    Args:
        x, y: features and targets; folds: ``(N,)`` outer fold of each row (at least two);
        groups: ``(N,)`` patient of each row, for the inner parts when a training set holds a
        single fold.

    Returns:
        ``(N,)`` out-of-fold predicted Dice.
    """
    out = np.empty(len(y))
    for f in np.unique(folds):
        test = folds == f
        inner_parts = parts_of(folds[~test], groups[~test])
        model, _ = fit(x[~test], y[~test], inner_parts, alpha=alpha)
        out[test] = model.predict(x[test])
    return out
