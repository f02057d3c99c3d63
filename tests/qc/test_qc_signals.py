"""Per-slice and per-volume QC signals: values on hand-made masks, and corrupted masks scoring worse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from acdctool.qc import signals
from acdctool.qc.volume import JUMP_FLOOR_MM2, patient_volumes, volume_signals


def ring(size=32, myo=10, lv=6, rv=False):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size // 2, xx - size // 2)
    m = np.zeros((size, size), np.uint8)
    if rv:
        m[np.hypot(yy - size // 2, xx - size // 2 + myo + 3) < 5] = 1
    m[r < myo] = 2
    m[r < lv] = 3
    return m


def one_hot(masks):
    return np.eye(4, dtype=np.float32)[masks].transpose(0, 3, 1, 2)


def test_mask_signals_areas_in_mm2_and_validity():
    clean = ring()
    blob = clean.copy()
    blob[0:3, 0:3] = 3  # stray LV fragment: anatomically invalid
    s = signals.mask_signals(np.stack([clean, blob, np.zeros_like(clean)]), np.array([[1.5, 2.0]] * 3))
    assert s["area_lv"][0] == pytest.approx((clean == 3).sum() * 3.0)
    assert s["area_myo"][0] == pytest.approx((clean == 2).sum() * 3.0)
    assert s["area_lv"][1] - s["area_lv"][0] == pytest.approx(9 * 3.0)
    assert s["valid"].tolist() == [1, 0, 1] and s["empty"].tolist() == [0, 0, 1]
    assert "disconnectivity_in_lv" in s["failed"][1].split(";") and s["n_failed"][1] >= 1


def test_prob_signals_certain_uniform_and_missed_structure():
    m = np.stack([ring(), ring()])
    certain = one_hot(m)
    s = signals.prob_signals(certain, m)
    assert s["entropy_fg"].tolist() == pytest.approx([0, 0], abs=1e-5)
    assert s["margin_fg"].tolist() == pytest.approx([1, 1], abs=1e-5)
    assert s["prob_dice_mean"].tolist() == pytest.approx([1, 1], abs=1e-3)
    uniform = np.full_like(certain, 0.25)
    u = signals.prob_signals(uniform, m)
    assert u["entropy_fg"][0] == pytest.approx(np.log(4), rel=1e-4) and u["margin_fg"][0] == pytest.approx(0)
    # the net saw an LV the mask lacks: soft Dice of LV drops far below 1
    no_lv = m.copy()
    no_lv[no_lv == 3] = 0
    missed = signals.prob_signals(certain, no_lv)
    assert missed["prob_dice_lv"][0] < 0.05 and missed["prob_dice_min"][0] == missed["prob_dice_lv"][0]


def test_top2_network_equals_sort():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 4, (3, 4, 5, 6)).astype(np.float32)  # ties included
    top1, top2 = signals._top2(p)
    ref = np.sort(p, axis=1)
    np.testing.assert_array_equal(top1, ref[:, -1])
    np.testing.assert_array_equal(top2, ref[:, -2])


def test_boundary_band_width():
    m = np.zeros((1, 20, 20), np.uint8)
    m[0, 5:15, 5:15] = 3
    edge = signals.boundary_band(m, 0)[0]
    assert edge.sum() == (4 * 10 - 4) + 4 * 10  # inner ring of the square + 4-neighbours outside (no corners)
    band = signals.boundary_band(m, 2)[0]
    ring_ = np.zeros_like(band)
    ring_[2:18, 2:18] = True  # 2 px beyond the outer edge pixels (rows/cols 4 and 15) ...
    for r, c in ((2, 2), (2, 17), (17, 2), (17, 17)):
        ring_[r, c] = False  # ... whose corners are not edges (4-neighbours only)
    ring_[8:12, 8:12] = False  # more than 2 px inside the square
    np.testing.assert_array_equal(band, ring_)
    assert not signals.boundary_band(np.zeros((1, 8, 8), np.uint8), 2).any()


def test_nvae_signals_reward_agreement():
    m = np.stack([ring(rv=True), ring(rv=True)])
    recon = m.copy()
    recon[1][recon[1] == 1] = 0  # the NVAE drops the RV of row 1
    logp = np.log(np.where(recon == m, 0.9, 0.05)).astype(np.float32)
    s = signals.nvae_signals(m, recon, logp)
    assert s["nvae_dice_mean"][0] == 1.0 and s["nvae_dice_rv"][1] == 0.0
    assert s["nvae_dice_min"][1] == 0.0 and s["nvae_nll"][1] > s["nvae_nll"][0] > 0


def test_true_dice_uses_acdc_conventions():
    empty = np.zeros((1, 8, 8), np.uint8)
    assert signals.true_dice(empty, empty).tolist() == [1.0]
    lv = empty.copy()
    lv[0, 2:5, 2:5] = 3
    assert signals.true_dice(lv, empty).tolist() == pytest.approx([2 / 3])  # RV, MYO both empty: 1 each


def _volume(areas_lv, phase="ED", patient="p1", thickness=10.0):
    n = len(areas_lv)
    return pd.DataFrame(
        {
            "patient": patient,
            "phase": phase,
            "model": "m",
            "slice": np.arange(n),
            "n_slices": n,
            "thickness": thickness,
            "area_rv": 100.0,
            "area_myo": 100.0,
            "area_lv": np.asarray(areas_lv, float),
        }
    )


def test_volume_signals_jumps_position_and_missing_mid():
    t = volume_signals(_volume([400, 400, 0, 400, 400, 10]))
    jump = t["jump_lv"].to_numpy()
    assert jump[2] == pytest.approx(1.0)  # vanishes between two 400 mm² neighbours
    assert jump[0] == pytest.approx(0.0) and jump[1] == pytest.approx(200 / 400)
    assert jump[5] == pytest.approx(abs(10 - 400) / 400)
    assert t["z"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert t["position"].tolist() == ["base", "base", "mid", "mid", "apex", "apex"]
    assert t["missing_mid"].tolist() == [0, 0, 1, 0, 0, 0]
    assert t["rel_area_lv"].max() == 1.0 and t["jump_max"].ge(t["jump_lv"]).all()
    # tiny areas never count as a full jump: the floor
    small = volume_signals(_volume([0, 5, 0]))
    assert small["jump_lv"][1] == pytest.approx(5 / JUMP_FLOOR_MM2)


def test_volume_signals_keep_rows_in_place_when_shuffled():
    t = _volume([400, 300, 200, 100])
    shuffled = t.iloc[[2, 0, 3, 1]].reset_index(drop=True)
    a = volume_signals(t).set_index("slice")["jump_lv"]
    b = volume_signals(shuffled).set_index("slice")["jump_lv"]
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index())


def test_patient_volumes_ed_es_check():
    ok = pd.concat([_volume([400, 400]), _volume([200, 200], phase="ES")])
    wrong = pd.concat([_volume([100, 100], patient="p2"), _volume([300, 300], phase="ES", patient="p2")])
    one_phase = _volume([100], patient="p3")
    v = patient_volumes(pd.concat([ok, wrong, one_phase], ignore_index=True)).set_index("patient")
    assert v.loc["p1", "lv_ed_ml"] == pytest.approx(2 * 400 * 10 / 1000)  # mm² × mm → mL
    assert v.loc["p1", "ed_gt_es_lv"] == 1.0 and v.loc["p2", "ed_gt_es_lv"] == 0.0
    assert np.isnan(v.loc["p3", "ed_gt_es_lv"])
