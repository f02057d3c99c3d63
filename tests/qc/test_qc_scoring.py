"""AUC, Spearman and MAE against brute-force oracles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from acdctool.qc.scoring import auc, mae, score_level, spearman


def brute_auc(score, positive):
    pairs = [(p, n) for p in np.flatnonzero(positive) for n in np.flatnonzero(~positive)]
    return sum(1.0 if score[p] > score[n] else 0.5 if score[p] == score[n] else 0.0 for p, n in pairs) / len(pairs)


def brute_ranks(x):
    # average rank (1-based) of each value: 1 + number smaller + half the number of other equal ones
    return np.array([1 + (x < v).sum() + ((x == v).sum() - 1) / 2 for v in x])


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 6, 40).astype(float)  # many ties
    positive = rng.random(40) < 0.3
    assert auc(score, positive) == pytest.approx(brute_auc(score, positive))
    assert auc(-score, positive) == pytest.approx(1 - brute_auc(score, positive))


def test_auc_extremes_and_undefined():
    assert auc(np.array([3.0, 2, 1]), np.array([True, False, False])) == 1.0
    assert auc(np.array([1.0, 2, 3]), np.array([True, False, False])) == 0.0
    assert np.isnan(auc(np.array([1.0, 2]), np.array([False, False])))


@pytest.mark.parametrize("seed", range(3))
def test_spearman_equals_pearson_of_ranks(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 8, 30).astype(float)
    b = a + rng.normal(0, 3, 30)
    ra, rb = brute_ranks(a), brute_ranks(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    expected = (da * db).sum() / np.sqrt((da**2).sum() * (db**2).sum())
    assert spearman(a, b) == pytest.approx(expected)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_mae_is_mean_absolute_difference():
    p, t = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.2, 1.0])
    assert mae(p, t) == pytest.approx(sum(abs(x - y) for x, y in zip(p, t, strict=True)) / 3)


def test_score_level_orients_predictions_and_signals():
    true = np.array([0.95, 0.9, 0.5, 0.3, 0.85])
    pred = true + np.array([0.01, -0.02, 0.05, 0.0, 0.0])
    entropy = 1 - true  # higher is worse
    s = score_level(true, 0.8, pred, {"entropy_fg": (entropy, +1), "nvae_dice_mean": (true, -1)})
    assert s["n"] == 5 and s["n_bad"] == 2
    assert s["predicted"]["auc"] == 1.0 and s["predicted"]["spearman"] == pytest.approx(1.0)
    assert s["signals"]["entropy_fg"] == {"auc": 1.0, "spearman": pytest.approx(1.0)}
    assert s["signals"]["nvae_dice_mean"]["auc"] == 1.0
    # a predictor ranked backwards has AUC 0 (no silent flipping)
    assert score_level(true, 0.8, -pred)["predicted"]["auc"] == 0.0


def test_brute_auc_helper_sanity():
    # the oracle itself: all orderings of 2 positives, 2 negatives
    for perm in itertools.permutations(range(4)):
        score = np.array(perm, float)
        positive = np.array([True, True, False, False])
        wins = sum(score[p] > score[n] for p in (0, 1) for n in (2, 3))
        assert brute_auc(score, positive) == wins / 4
