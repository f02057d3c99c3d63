"""The slice model: expected Dice of each class from a hurdle model, averaged, then calibrated.

Dice per class is bimodal: a structure the mask has and the ground truth lacks (or the
reverse) scores 0 whatever its shape, which is how most bad slices are bad (an RV drawn past
the apex, an atrium at the base). So each class c gets three small models on its features
(:func:`acdctool.qc.features.feature_names` with ``cls=c``):

- ``spurious``: logistic P(ground truth lacks c | the mask has c);
- ``missed``: logistic P(ground truth has c | the mask lacks c);
- ``dice``: ridge + isotonic E[Dice_c | both have c] (:class:`acdctool.qc.model.LinearIsotonic`);

so that ``E[Dice_c] = (1 − spurious)·dice`` where the mask has c and ``1 − missed`` where it
does not (ACDC conventions: both empty → 1, one empty → 0). The slice's score is the mean over
RV, MYO and LV, mapped by two monotone curves fitted on cross-fitted scores (as in
:func:`acdctool.qc.model.fit`): the *expected* slice Dice (isotonic in squared error, what a
patient's mean must average) and the *predicted* slice Dice, the conditional median (isotonic
in absolute error: Dice is skewed towards 0, and the median is the point prediction with the
least mean absolute error). Numpy only.

Example:
    >>> rng = np.random.default_rng(0)
    >>> n = 300; x = rng.normal(size=(n, 1))
    >>> present = np.ones((n, 3), bool); has = np.ones((n, 3), bool); has[:, 0] = x[:, 0] > -1
    >>> dice = np.clip(0.9 + 0.05 * x, 0, 1).repeat(3, axis=1) * has
    >>> model, _ = fit_slice_model({c: x for c in CLASSES}, present, has, dice, dice.mean(1),
    ...                            np.arange(n) % 3, {c: ["f"] for c in CLASSES})
    >>> p = model.predict({c: x for c in CLASSES}, present)
    >>> bool(np.corrcoef(p, dice.mean(1))[0, 1] > 0.9)
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from acdctool.conventions import CLASSES
from acdctool.qc.model import DEFAULT_ALPHA, LinearIsotonic, fit, isotonic, isotonic_median, parts_of

__all__ = ["Logistic", "ClassModel", "SliceModel", "fit_logistic", "fit_class", "fit_slice_model"]


@dataclass
class Logistic:
    """``P(event) = sigmoid(((x − mean) / scale) · coef + intercept)``."""

    features: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "logistic",
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Logistic:
        f = list(d["features"])
        mean, scale, coef = (np.asarray(d[k], np.float64) for k in ("mean", "scale", "coef"))
        if any(a.shape != (len(f),) for a in (mean, scale, coef)):
            raise ValueError("inconsistent logistic model: lengths of features, mean, scale, coef differ")
        return cls(f, mean, scale, coef, float(d["intercept"]))


def fit_logistic(x: np.ndarray, event: np.ndarray, features: Sequence[str], alpha: float = DEFAULT_ALPHA) -> Logistic:
    """L2-penalised logistic regression (Newton's method) on standardised features.

    With no event or only events among the rows (or no rows), a constant model at the
    Laplace-smoothed rate ``(events + ½) / (rows + 1)``.
    """
    x = np.asarray(x, np.float64).reshape(len(event), len(features))
    e = np.asarray(event, np.float64)
    n, k = x.shape
    mean = x.mean(axis=0) if n else np.zeros(k)
    scale = x.std(axis=0) if n else np.ones(k)
    scale = np.where(scale > 1e-12, scale, 1.0)
    rate = (e.sum() + 0.5) / (n + 1.0)
    if n == 0 or e.min() == e.max():
        return Logistic(list(features), mean, scale, np.zeros(k), float(np.log(rate / (1 - rate))))
    z = np.c_[(x - mean) / scale, np.ones(n)]
    penalty = np.diag(np.r_[np.full(k, float(alpha)), 0.0]) + 1e-8 * np.eye(k + 1)

    def loss(w: np.ndarray) -> float:
        u = z @ w
        return float(np.sum(np.logaddexp(0.0, u) - e * u) + 0.5 * w @ penalty @ w)

    w = np.zeros(k + 1)
    w[-1] = np.log(rate / (1 - rate))
    current = loss(w)
    for _ in range(100):  # damped Newton: halve the step until the penalised loss drops
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (p - e) + penalty @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > current:
            t /= 2
        if t <= 1e-6:
            break
        w = w - t * step
        previous, current = current, loss(w)
        if previous - current < 1e-10 * max(1.0, abs(current)):
            break
    return Logistic(list(features), mean, scale, w[:-1], float(w[-1]))


@dataclass
class ClassModel:
    """Expected Dice of one class (see the module docstring)."""

    features: list[str]
    spurious: Logistic
    missed: Logistic
    dice: LinearIsotonic

    def expected(self, x: np.ndarray, present: np.ndarray) -> np.ndarray:
        """``E[Dice_c]`` per row; ``present``: whether the mask holds the class."""
        present = np.asarray(present, bool)
        return np.where(present, (1 - self.spurious.prob(x)) * self.dice.predict(x), 1 - self.missed.prob(x))

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "spurious": self.spurious.to_dict(),
            "missed": self.missed.to_dict(),
            "dice": self.dice.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassModel:
        f = list(d["features"])
        parts = Logistic.from_dict(d["spurious"]), Logistic.from_dict(d["missed"]), LinearIsotonic.from_dict(d["dice"])
        if any(p.features != f for p in parts):
            raise ValueError("inconsistent class model: its parts use other features")
        return cls(f, *parts)


def fit_class(
    x: np.ndarray,
    present: np.ndarray,
    has: np.ndarray,
    dice: np.ndarray,
    parts: np.ndarray,
    features: Sequence[str],
    alpha: float = DEFAULT_ALPHA,
) -> ClassModel:
    """Fit one class's three models.

    Args:
        x: ``(N, F)`` the class's features; present: ``(N,)`` the mask holds the class;
        has: ``(N,)`` the ground truth holds it; dice: ``(N,)`` its true Dice (conventions);
        parts: cross-fitting parts for the Dice model's isotonic map; alpha: penalty.
    """
    present, has = np.asarray(present, bool), np.asarray(has, bool)
    names = list(features)
    spurious = fit_logistic(x[present], ~has[present], names, alpha)
    missed = fit_logistic(x[~present], has[~present], names, alpha)
    both = present & has
    if both.sum() >= 2:
        dice_model, _ = fit(x[both], dice[both], parts[both], names, alpha)
    else:  # nothing to learn a shape quality from: a constant
        k = x.shape[1]
        value = float(dice[both].mean()) if both.any() else 1.0
        dice_model = LinearIsotonic(names, np.zeros(k), np.ones(k), np.zeros(k), 0.0, np.zeros(1), np.full(1, value))
    return ClassModel(names, spurious, missed, dice_model)


@dataclass
class SliceModel:
    """Per-class expected Dice, averaged, mapped to the slice's expected and predicted Dice.

    Attributes:
        classes: class → its :class:`ClassModel`.
        iso_x, iso_y: knots of the score → expected Dice map (conditional mean).
        med_x, med_y: knots of the score → predicted Dice map (conditional median); None in
            calibrations written before it existed, which then predict the expected Dice.
    """

    classes: dict[str, ClassModel]
    iso_x: np.ndarray
    iso_y: np.ndarray
    med_x: np.ndarray | None = None
    med_y: np.ndarray | None = None

    @property
    def features(self) -> list[str]:
        """Every feature any class uses, in first-use order."""
        return list(dict.fromkeys(f for m in self.classes.values() for f in m.features))

    def score(self, xs: Mapping[str, np.ndarray], present: np.ndarray) -> np.ndarray:
        """Mean over classes of ``E[Dice_c]``: ``(N,)``; ``xs``: class → its features, ``present`` ``(N, 3)``."""
        return np.mean([m.expected(xs[c], present[:, j]) for j, (c, m) in enumerate(self.classes.items())], axis=0)

    def predictions(self, xs: Mapping[str, np.ndarray], present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(predicted, expected)`` slice Dice ``(N,)`` each, in [0, 1], from one scoring.

        ``predicted``: the conditional median (least absolute error); ``expected``: the
        conditional mean (averages into a patient's expected Dice). Without a median map (an
        older calibration) both are the expected Dice.
        """
        score = self.score(xs, present)
        expected = np.clip(np.interp(score, self.iso_x, self.iso_y), 0.0, 1.0)
        if self.med_x is None or self.med_y is None:
            return expected, expected
        return np.clip(np.interp(score, self.med_x, self.med_y), 0.0, 1.0), expected

    def expected(self, xs: Mapping[str, np.ndarray], present: np.ndarray) -> np.ndarray:
        """Expected slice Dice ``(N,)`` (see :meth:`predictions`)."""
        return self.predictions(xs, present)[1]

    def predict(self, xs: Mapping[str, np.ndarray], present: np.ndarray) -> np.ndarray:
        """Predicted slice Dice ``(N,)`` (see :meth:`predictions`)."""
        return self.predictions(xs, present)[0]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "hurdle",
            "classes": {c: m.to_dict() for c, m in self.classes.items()},
            "isotonic": {"x": self.iso_x.tolist(), "y": self.iso_y.tolist()},
        }
        if self.med_x is not None and self.med_y is not None:
            out["isotonic_median"] = {"x": self.med_x.tolist(), "y": self.med_y.tolist()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SliceModel:
        if d.get("type") != "hurdle":
            raise ValueError(f"slice model type {d.get('type')!r}, expected 'hurdle'")
        if list(d["classes"]) != list(CLASSES):
            raise ValueError(f"slice model classes {list(d['classes'])}, expected {list(CLASSES)}")
        maps: list[tuple[np.ndarray | None, np.ndarray | None]] = []
        for key in ("isotonic", "isotonic_median"):
            if key not in d:
                maps.append((None, None))
                continue
            kx, ky = (np.asarray(d[key][k], np.float64) for k in ("x", "y"))
            if kx.shape != ky.shape or kx.size == 0:
                raise ValueError(f"inconsistent {key} knots")
            maps.append((kx, ky))
        (iso_x, iso_y), (med_x, med_y) = maps
        if iso_x is None or iso_y is None:
            raise ValueError("slice model without its isotonic map")
        return cls({c: ClassModel.from_dict(m) for c, m in d["classes"].items()}, iso_x, iso_y, med_x, med_y)


def fit_slice_model(
    xs: Mapping[str, np.ndarray],
    present: np.ndarray,
    has: np.ndarray,
    dice: np.ndarray,
    y: np.ndarray,
    parts: np.ndarray,
    features: Mapping[str, Sequence[str]],
    alpha: float = DEFAULT_ALPHA,
) -> tuple[SliceModel, np.ndarray]:
    """Fit the slice model; the final isotonic map on cross-fitted scores.

    Args:
        xs: class → ``(N, F_c)`` its features (named by ``features[c]``).
        present, has, dice: ``(N, 3)`` mask holds / ground truth holds / true Dice, per class.
        y: ``(N,)`` true slice Dice (mean of ``dice``).
        parts: ``(N,)`` cross-fitting parts (patients never span parts).

    Returns:
        ``(model, inner)``: the model fitted on all rows, and every row's *expected* Dice from
        class models that did not see its part (for a second-level patient model).
    """
    present, has = np.asarray(present, bool), np.asarray(has, bool)

    def fit_all(rows: np.ndarray) -> dict[str, ClassModel]:
        inner_parts = parts_of(parts[rows], parts[rows])
        return {
            c: fit_class(xs[c][rows], present[rows, j], has[rows, j], dice[rows, j], inner_parts, features[c], alpha)
            for j, c in enumerate(CLASSES)
        }

    everything = np.ones(len(y), bool)
    scores = np.empty(len(y))
    ups = np.unique(parts)
    for p in ups if len(ups) >= 2 else ():
        test = parts == p
        part_model = SliceModel(fit_all(~test), np.zeros(1), np.zeros(1))
        scores[test] = part_model.score({c: xs[c][test] for c in CLASSES}, present[test])
    final = fit_all(everything)
    if len(ups) < 2:
        scores = SliceModel(final, np.zeros(1), np.zeros(1)).score(xs, present)
    kx, ky = isotonic(scores, y)
    mx, my = isotonic_median(scores, y)
    return SliceModel(final, kx, ky, mx, my), np.clip(np.interp(scores, kx, ky), 0.0, 1.0)
