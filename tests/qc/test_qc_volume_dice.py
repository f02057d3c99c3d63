"""A patient's volume Dice in QC: the truth equals eval's, the signals weigh slices by area."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from acdctool.io.slices import SliceFile
from acdctool.qc.patients import patient_table
from acdctool.qc.table import slice_table
from acdctool.qc.volume_dice import VolumeModel, fit_volume_model, volume_columns, volume_feature
from acdctool.report.tables import volume_metrics


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def test_true_volume_dice_is_evals_volume_dice(qc_seg):
    with SliceFile(qc_seg) as f:
        st = slice_table(f, workers=1)
        index, pred, gt = f.index, f.read("pred"), f.read("gt")
    patients = patient_table(st.table).set_index("patient")
    volumes = volume_metrics(index, pred, gt, hausdorff=False)
    expected = volumes.groupby("patient")["dice_mean"].mean()
    np.testing.assert_allclose(patients.loc[expected.index, "gt_vdice"], expected, atol=1e-12)
    # the two patient measures differ on corrupted masks: slices weigh alike in one, pixels in the other
    assert not np.allclose(patients.loc[expected.index, "gt_dice"], expected, atol=1e-3)


def test_volume_signals_weigh_slices_by_area_per_volume():
    rows = []
    for phase, (a_rv, d_rv) in {"ED": ((100.0, 300.0), (0.5, 0.9)), "ES": ((50.0, 50.0), (1.0, 0.6))}.items():
        for a, d in zip(a_rv, d_rv, strict=True):
            rows.append({"patient": "p", "model": "", "phase": phase, "area_rv": a, "prob_dice_rv": d})
    t = pd.DataFrame(rows).assign(area_myo=0.0, prob_dice_myo=0.3, area_lv=10.0, prob_dice_lv=0.7)
    out = volume_columns(t)
    ed = np.mean([(100 * 0.5 + 300 * 0.9) / 400, 1.0, 0.7])  # MYO absent from the mask volume: 1
    es = np.mean([(50 * 1.0 + 50 * 0.6) / 100, 1.0, 0.7])
    assert out["prob_vdice"].iloc[0] == pytest.approx((ed + es) / 2)
    assert "nvae_vdice" not in out and "gt_vdice" not in out  # no inputs for them


def test_volume_feature_follows_the_allowed_groups_and_the_line_fits():
    cols = ["pred_mean", "prob_vdice", "nvae_vdice"]
    assert volume_feature(cols) == "prob_vdice"
    assert volume_feature(cols, ["mask", "nvae"]) == "nvae_vdice"
    assert volume_feature(cols, ["mask"]) == "pred_mean"
    assert volume_feature(["pred_mean"], ["mask", "probs", "nvae"]) == "pred_mean"
    rng = np.random.default_rng(0)
    x = rng.uniform(0.9, 1.0, 50)
    p = pd.DataFrame({"prob_vdice": x, "gt_vdice": 3 * x - 2.05})
    m = fit_volume_model(p, "prob_vdice")
    assert (m.slope, m.intercept) == (pytest.approx(3.0), pytest.approx(-2.05))
    assert VolumeModel.from_dict(m.to_dict()) == m
    assert m.predict(pd.DataFrame({"prob_vdice": [0.0, 1.0]})).tolist() == [0.0, pytest.approx(0.95)]
    for bad in ({**m.to_dict(), "type": "tree"}, {**m.to_dict(), "feature": "gt_vdice"}):
        with pytest.raises(ValueError):
            VolumeModel.from_dict(bad)
