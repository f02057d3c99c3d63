"""The combination: ridge, isotonic regression (against the min-max formula), out-of-fold fitting."""

from __future__ import annotations

import numpy as np
import pytest

from acdctool.qc.model import LinearIsotonic, cross_validate, fit, fit_ridge, isotonic, isotonic_median, parts_of


def isotonic_minmax(x, y):
    """Exact isotonic regression at each sorted point: max over j<=i of min over k>=i of mean(y[j..k])."""
    order = np.argsort(x, kind="stable")
    ys = y[order]
    n = len(ys)
    fitted = [max(min(ys[j : k + 1].mean() for k in range(i, n)) for j in range(i + 1)) for i in range(n)]
    return np.array(fitted), x[order]


@pytest.mark.parametrize("seed", range(4))
def test_isotonic_matches_the_minmax_formula(seed):
    rng = np.random.default_rng(seed)
    x = rng.permutation(25).astype(float)  # distinct x
    y = x / 25 + rng.normal(0, 0.3, 25)
    kx, ky = isotonic(x, y)
    fitted, xs = isotonic_minmax(x, y)
    # blocks = runs of equal fitted values; knots = (mean x of the block, its value)
    starts = np.r_[0, np.flatnonzero(~np.isclose(np.diff(fitted), 0)) + 1, len(fitted)]
    want_x = [xs[a:b].mean() for a, b in zip(starts[:-1], starts[1:], strict=True)]
    want_y = [fitted[a] for a in starts[:-1]]
    np.testing.assert_allclose(kx, want_x)
    np.testing.assert_allclose(ky, want_y)
    assert np.all(np.diff(kx) > 0) and np.all(np.diff(ky) > 0)


def l1_isotonic_cost(y):
    """Least sum of |y - f| over non-decreasing f (dynamic programme over the values of y)."""
    values = np.unique(y)
    best = np.abs(y[0] - values)
    for yi in y[1:]:
        best = np.minimum.accumulate(best) + np.abs(yi - values)
    return best.min()


@pytest.mark.parametrize("seed", range(4))
def test_isotonic_median_is_the_least_absolute_error_monotone_fit(seed):
    rng = np.random.default_rng(seed)
    n = 40
    x = np.arange(n, dtype=float)
    y = np.clip(0.7 + x / 200 + rng.normal(0, 0.1, n), 0, 1)
    y[rng.choice(n, 6, replace=False)] = 0.0  # Dice-like: a few structures missed outright
    kx, ky = isotonic_median(x, y)
    assert np.all(np.diff(kx) > 0) and np.all(np.diff(ky) > 0)
    # x = 0..n-1: each block is a run [a, e) whose knot is its mean x, (a + e - 1) / 2
    fitted, a = np.empty(n), 0
    for cx, cy in zip(kx, ky, strict=True):
        e = int(round(2 * cx - a + 1))
        fitted[a:e] = cy
        a = e
    assert a == n
    assert np.abs(y - fitted).sum() == pytest.approx(l1_isotonic_cost(y), abs=1e-9)
    # the mean fit has the lower squared error, the median fit the lower absolute error
    mx, my = isotonic(x, y)
    mean_fit = np.interp(x, mx, my)
    assert np.abs(y - np.interp(x, kx, ky)).mean() <= np.abs(y - mean_fit).mean()


def test_isotonic_pools_equal_x():
    kx, ky = isotonic(np.array([1.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]))
    assert kx.tolist() == [1.0, 2.0] and ky.tolist() == [0.5, 2.0]


def test_ridge_without_penalty_is_least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * [1, 10, 0.1] + [0, 5, -2]
    y = x @ [0.3, -0.02, 2.0] + 0.5 + rng.normal(0, 0.01, 50)
    mean, scale, coef, b = fit_ridge(x, y, alpha=0.0)
    pred = ((x - mean) / scale) @ coef + b
    design = np.c_[x, np.ones(50)]
    lstsq = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(pred, lstsq, atol=1e-8)
    # a penalty shrinks the coefficients
    assert np.linalg.norm(fit_ridge(x, y, alpha=100.0)[2]) < np.linalg.norm(coef)


def test_constant_feature_gets_no_weight():
    x = np.c_[np.arange(10.0), np.full(10, 3.0)]
    _, scale, coef, _ = fit_ridge(x, np.arange(10.0), alpha=0.0)
    assert scale[1] == 1.0 and coef[1] == pytest.approx(0.0)


def test_out_of_fold_predictions_never_see_their_fold():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3))
    y = 1 / (1 + np.exp(-x[:, 0] - 0.5 * x[:, 1]))
    folds = np.repeat(np.arange(4), 30)
    groups = np.repeat(np.arange(24), 5)
    oof = cross_validate(x, y, folds, groups)
    y2 = y.copy()
    y2[folds == 0] = rng.uniform(0, 1, 30)  # change fold 0's targets: its predictions must not move
    oof2 = cross_validate(x, y2, folds, groups)
    np.testing.assert_array_equal(oof[folds == 0], oof2[folds == 0])
    assert not np.allclose(oof[folds != 0], oof2[folds != 0])
    assert np.corrcoef(oof, y)[0, 1] > 0.95 and oof.min() >= 0 and oof.max() <= 1


def test_fit_inner_predictions_are_cross_fitted():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 2))
    y = np.clip(0.5 + 0.2 * x[:, 0], 0, 1)
    parts = np.repeat(np.arange(3), 20)
    model, inner = fit(x, y, parts, ["a", "b"])
    y2 = y.copy()
    y2[parts == 0] = 0.0
    _, inner2 = fit(x, y2, parts, ["a", "b"])
    # part 0's cross-fitted scores do not use part 0's targets (only the final isotonic map does)
    m1, s1, c1, b1 = fit_ridge(x[parts != 0], y[parts != 0], 1.0)
    m2, s2, c2, b2 = fit_ridge(x[parts != 0], y2[parts != 0], 1.0)
    np.testing.assert_allclose(((x - m1) / s1) @ c1 + b1, ((x - m2) / s2) @ c2 + b2)
    assert model.features == ["a", "b"] and inner.shape == (60,)


def test_model_dict_round_trip_and_checks():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2))
    model, _ = fit(x, np.clip(0.5 + 0.1 * x[:, 0], 0, 1), np.repeat([0, 1], 20), ["a", "b"])
    again = LinearIsotonic.from_dict(model.to_dict())
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    bad = model.to_dict()
    bad["coef"] = [1.0]
    with pytest.raises(ValueError):
        LinearIsotonic.from_dict(bad)


def test_parts_fall_back_to_patients_when_one_fold():
    folds = np.full(12, -1)
    groups = np.repeat(np.arange(6), 2)
    parts = parts_of(folds, groups, max_parts=3)
    assert len(np.unique(parts)) == 3
    for g in range(6):  # a patient never spans parts
        assert len(np.unique(parts[groups == g])) == 1
    np.testing.assert_array_equal(parts_of(np.array([3, 3, 7, 7]), np.arange(4)), [0, 0, 1, 1])
