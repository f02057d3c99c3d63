"""The per-class hurdle slice model: logistic fits against a generic optimiser, formulas, round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from acdctool.conventions import CLASSES
from acdctool.qc.hurdle import ClassModel, SliceModel, fit_class, fit_logistic, fit_slice_model


def penalised_loss(w, z, e, alpha):
    u = z @ w
    return np.sum(np.logaddexp(0, u) - e * u) + 0.5 * alpha * np.sum(w[:-1] ** 2)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_logistic_minimises_the_penalised_loss(alpha):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * [1, 5, 0.2]
    e = rng.random(200) < 1 / (1 + np.exp(-(x[:, 0] - 0.3 * x[:, 1])))
    m = fit_logistic(x, e, ["a", "b", "c"], alpha)
    z = np.c_[(x - m.mean) / m.scale, np.ones(200)]
    ref = optimize.minimize(penalised_loss, np.zeros(4), args=(z, e, alpha), method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(np.r_[m.coef, m.intercept], ref.x, atol=1e-4)
    np.testing.assert_allclose(m.prob(x), 1 / (1 + np.exp(-(z @ ref.x))), atol=1e-5)


def test_logistic_survives_separable_data_and_constant_cases():
    x = np.arange(40.0)[:, None]
    e = x[:, 0] > 19.5  # perfectly separable: the penalty keeps it finite
    m = fit_logistic(x, e, ["x"], 1.0)
    lo, hi = m.prob(np.array([[0.0], [39.0]]))
    assert np.all(np.isfinite(m.coef)) and lo < 0.05 and hi > 0.95
    none = fit_logistic(x[:9], np.zeros(9, bool), ["x"])
    assert none.prob(x[:1])[0] == pytest.approx(0.5 / 10)  # Laplace: (0 + ½) / (9 + 1)
    empty = fit_logistic(np.empty((0, 1)), np.empty(0, bool), ["x"])
    assert empty.prob(x[:1])[0] == pytest.approx(0.5)


def test_class_expectation_follows_the_hurdle_formula():
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(size=(n, 2))
    present = rng.random(n) < 0.8
    has = np.where(present, rng.random(n) < 1 / (1 + np.exp(-2 - 2 * x[:, 0])), rng.random(n) < 0.3)
    dice = np.where(present & has, np.clip(0.85 + 0.05 * x[:, 1], 0, 1), np.where(~present & ~has, 1.0, 0.0))
    m = fit_class(x, present, has, dice, np.arange(n) % 4, ["a", "b"])
    e = m.expected(x, present)
    want = np.where(present, (1 - m.spurious.prob(x)) * m.dice.predict(x), 1 - m.missed.prob(x))
    np.testing.assert_allclose(e, want)
    assert m.missed.prob(x[:1])[0] == pytest.approx(has[~present].mean(), abs=0.1)
    # the spurious model learnt that low x[:, 0] means a structure the truth lacks
    assert m.spurious.prob(np.array([[-2.0, 0]]))[0] > m.spurious.prob(np.array([[2.0, 0]]))[0]
    assert np.corrcoef(e, dice)[0, 1] > 0.5


def _data(seed=2, n=240):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    present = np.ones((n, 3), bool)
    has = np.ones((n, 3), bool)
    has[:, 0] = x[:, 0] > -1.2
    dice = np.clip(0.9 + 0.04 * x[:, 1:2], 0, 1).repeat(3, axis=1) * has
    return {c: x for c in CLASSES}, present, has, dice, dice.mean(axis=1)


def test_slice_model_round_trip_and_inner_predictions_do_not_see_their_part():
    xs, present, has, dice, y = _data()
    parts = np.arange(len(y)) % 4
    feats = {c: ["a", "b"] for c in CLASSES}
    model, inner = fit_slice_model(xs, present, has, dice, y, parts, feats)
    again = SliceModel.from_dict(model.to_dict())
    np.testing.assert_array_equal(again.predict(xs, present), model.predict(xs, present))
    assert again.features == ["a", "b"] and isinstance(again.classes["rv"], ClassModel)
    # part 0's inner predictions come from class models fitted without part 0
    from acdctool.qc.model import parts_of

    rest = parts != 0
    cut = {
        c: fit_class(
            xs[c][rest], present[rest, j], has[rest, j], dice[rest, j], parts_of(parts[rest], parts[rest]), ["a", "b"]
        )
        for j, c in enumerate(CLASSES)
    }
    score = SliceModel(cut, np.zeros(1), np.zeros(1)).score({c: xs[c][~rest] for c in CLASSES}, present[~rest])
    np.testing.assert_allclose(inner[~rest], np.clip(np.interp(score, model.iso_x, model.iso_y), 0, 1))
    with pytest.raises(ValueError):
        SliceModel.from_dict({**model.to_dict(), "type": "ridge+isotonic"})


def test_slice_model_predicts_the_median_and_averages_the_mean():
    xs, present, has, dice, y = _data()
    model, _ = fit_slice_model(xs, present, has, dice, y, np.arange(len(y)) % 4, {c: ["a", "b"] for c in CLASSES})
    pred, expected = model.predict(xs, present), model.expected(xs, present)
    assert model.med_x is not None and not np.allclose(pred, expected)
    # in sample, each map wins on its own loss
    assert np.abs(pred - y).mean() <= np.abs(expected - y).mean()
    assert ((expected - y) ** 2).mean() <= ((pred - y) ** 2).mean()
    # a calibration written before the median map existed still loads, and predicts the mean
    old = model.to_dict()
    del old["isotonic_median"]
    np.testing.assert_array_equal(SliceModel.from_dict(old).predict(xs, present), expected)
