"""Boosted trees in absolute error: fitting, prediction rule, file round trip, the calibration's blend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from acdctool.qc.boost import Booster, BoostSettings, fit_booster
from acdctool.qc.calibration import Calibration
from acdctool.qc.features import feature_matrix


def test_a_stump_moves_each_side_by_its_median_residual():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0], [12.0], [13.0]])
    y = np.array([0.1, 0.2, 0.2, 0.3, 0.8, 0.9, 0.9, 1.0])
    b = fit_booster(x, y, ["a"], BoostSettings(n_iter=1, learning_rate=1.0, depth=1, min_leaf=2, n_bins=8))
    init = float(np.median(y))
    assert b.init == pytest.approx(init)
    assert b.feature[0].tolist() == [0, -1, -1]  # one split on the only feature, two leaves
    left = x[:, 0] < b.threshold[0, 0]
    assert left.tolist() == [True] * 4 + [False] * 4  # the split separating the two groups
    expected = init + np.where(left, np.median(y[:4] - init), np.median(y[4:] - init))
    np.testing.assert_allclose(b.predict(x), expected)


def test_boosting_learns_an_interaction_out_of_sample_and_is_deterministic():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(1200, 4))
    y = np.where((x[:, 0] > 0.6) & (x[:, 1] < 0.3), 0.3, 0.9) + rng.normal(0, 0.02, 1200)
    names = ["a", "b", "c", "d"]
    b = fit_booster(x[:800], y[:800], names)
    err = np.abs(b.predict(x[800:]) - y[800:]).mean()
    line = np.c_[np.ones(800), x[:800]]
    coef = np.linalg.lstsq(line, y[:800], rcond=None)[0]
    err_line = np.abs(np.c_[np.ones(400), x[800:]] @ coef - y[800:]).mean()
    assert err < 0.05 < err_line
    again = fit_booster(x[:800], y[:800], names)
    np.testing.assert_array_equal(again.predict(x[800:]), b.predict(x[800:]))


def test_booster_round_trips_and_refuses_inconsistent_files():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    b = fit_booster(x, x[:, 0] ** 2, ["a", "b", "c"], BoostSettings(n_iter=20, depth=2, min_leaf=5))
    again = Booster.from_dict(b.to_dict())
    np.testing.assert_array_equal(again.predict(x), b.predict(x))
    d = b.to_dict()
    for bad in (
        {**d, "type": "forest"},
        {**d, "value": d["value"][:-1]},
        {**d, "feature": [row[:-1] for row in d["feature"]]},
        {**d, "features": ["a"]},  # a split on feature 2 of 1
    ):
        with pytest.raises(ValueError):
            Booster.from_dict(bad)
    with pytest.raises(ValueError):
        fit_booster(x, x[:10, 0], ["a", "b", "c"])


def test_calibration_blends_the_median_with_the_booster(tmp_path, hand_calibration):
    path = hand_calibration(tmp_path / "cal.json", ["prob_dice_mean", "invalid"])
    cal = Calibration.load(path)
    t = pd.DataFrame(
        {
            "prob_dice_mean": [0.2, 0.5, 0.9],
            "valid": [1, 0, 1],
            "entropy_fg": [0.5, 0.3, 0.1],  # what tells a table with probability signals
            **{f"area_{c}": [10.0, 10.0, 10.0] for c in ("rv", "myo", "lv")},
        }
    )
    median, expected = cal.predict_slices(t)
    x = feature_matrix(t, ["prob_dice_mean"])
    cal.booster = fit_booster(
        np.r_[x, x],
        np.r_[[0.0, 0.4, 1.0], [0.0, 0.4, 1.0]],
        ["prob_dice_mean"],
        BoostSettings(n_iter=5, depth=1, min_leaf=1),
    )
    blended, expected2 = cal.predict_slices(t)
    np.testing.assert_allclose(blended, np.clip((median + cal.booster.predict(x)) / 2, 0, 1))
    np.testing.assert_array_equal(expected, expected2)  # the conditional mean (patients') is unchanged
    assert not np.allclose(blended, median)
    cal.save(tmp_path / "b.json")
    np.testing.assert_allclose(Calibration.load(tmp_path / "b.json").predict_slices(t)[0], blended)
