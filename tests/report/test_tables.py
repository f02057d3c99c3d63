from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from acdctool.io.slices import INDEX_COLUMNS
from acdctool.report.tables import clinical_table, position, slice_metrics, volume_metrics


def _index(n_slices=4, spacing=(1.5, 1.25), thickness=8.0):
    rows = []
    for phase in ("ED", "ES"):
        for z in range(n_slices):
            r = {c: 0 for c in INDEX_COLUMNS}
            r.update(
                patient="patient001",
                group="NOR",
                phase=phase,
                frame=1 if phase == "ED" else 10,
                slice=z,
                n_slices=n_slices,
                spacing_row=spacing[0],
                spacing_col=spacing[1],
                thickness=thickness,
                split="val",
                fold=0,
                model="m",
            )
            rows.append(r)
    return pd.DataFrame(rows)


def test_clinical_volumes_against_hand_computation():
    """A box LV of known voxel count: mL = voxels · 1.5 mm · 1.25 mm · 8 mm / 1000."""
    idx = _index()
    masks = np.zeros((8, 32, 32), np.uint8)
    masks[:4, 5:25, 5:15] = 3  # ED LV: 4 slices × 200 px
    masks[:4, 2:4, 2:30] = 2  # ED MYO: 4 × 56 px
    masks[4:, 5:15, 5:15] = 3  # ES LV: 4 × 100 px
    masks[:4, 26:30, 5:10] = 1  # ED RV: 4 × 20 px
    masks[4:6, 26:30, 5:10] = 1  # ES RV: 2 × 20 px
    voxel_ml = 1.5 * 1.25 * 8 / 1000
    t = clinical_table(idx, masks, masks).iloc[0]
    assert t.lv_edv_gt == pytest.approx(800 * voxel_ml)
    assert t.lv_esv_gt == pytest.approx(400 * voxel_ml)
    assert t.lv_ef_gt == pytest.approx(50.0)
    assert t.rv_edv_gt == pytest.approx(80 * voxel_ml) and t.rv_ef_gt == pytest.approx(50.0)
    assert t.myo_mass_gt == pytest.approx(224 * voxel_ml * 1.05)


def test_slice_and_volume_metrics_units():
    idx = _index(n_slices=2, spacing=(2.0, 2.0), thickness=10.0)
    gt = np.zeros((4, 32, 32), np.uint8)
    gt[:, 8:24, 8:24] = 3
    pred = gt.copy()
    pred[0, 8:24, 8:28] = 3  # 4 px too wide on row 0: surface off by 4 px = 8 mm
    table = slice_metrics(idx, pred, gt)
    assert table.loc[0, "hd_lv"] == pytest.approx(8.0)
    assert table.loc[1, "hd_lv"] == 0.0 and table.loc[1, "dice_lv"] == 1.0
    assert table.loc[0, "dice_lv"] == pytest.approx(2 * 256 / (256 + 320))
    assert table.loc[0, "dice_rv_conv"] == "both_empty" and table.loc[0, "dice_rv"] == 1.0
    vol = volume_metrics(idx, pred, gt)
    ed = vol[vol.phase == "ED"].iloc[0]
    assert ed.dice_lv == pytest.approx(2 * 512 / (512 + 576)) and ed.hd_lv == pytest.approx(8.0)


def test_slice_metrics_same_with_workers():
    rng = np.random.default_rng(0)
    n = 600
    idx = pd.concat([_index(n_slices=300)] * 1, ignore_index=True)
    gt = np.zeros((n, 24, 24), np.uint8)
    gt[:, 6:18, 6:18] = 3
    pred = gt.copy()
    pred[rng.random(pred.shape) < 0.02] = 2
    a = slice_metrics(idx, pred, gt, workers=1)
    b = slice_metrics(idx, pred, gt, workers=2)
    pd.testing.assert_frame_equal(a, b)


def test_position_thirds_base_first():
    s = position(pd.Series([0, 1, 2, 3, 4, 5, 6, 7, 8]), pd.Series([9] * 9))
    assert s.tolist() == ["base"] * 3 + ["mid"] * 3 + ["apex"] * 3


def test_overview_counts_and_distances_only_where_both_masks_have_the_structure():
    """RV absent from both masks everywhere: its Dice is 1 by convention (n = all slices), its
    HD has no value ('-', n = 0), never a mean HD of 0; MYO present in 2 of 8 slices only."""
    from acdctool.report.tables import overview

    idx = _index()
    gt = np.zeros((8, 32, 32), np.uint8)
    gt[:, 8:24, 8:24] = 3  # LV everywhere
    gt[:2, 4:8, 8:24] = 2  # MYO in two ED slices
    pred = gt.copy()
    pred[:, 8:24, 20:24] = 0  # LV a bit smaller: HD > 0
    table = slice_metrics(idx, pred, gt)
    volumes = volume_metrics(idx, pred, gt)
    o = overview(table, volumes)
    assert o["slices"]["n"] == 8 and o["volumes"]["n"] == 2
    assert o["slices"]["dice"]["rv"] == (1.0, 8)
    assert o["slices"]["hd95_mm"]["rv"] == (None, 0) and o["volumes"]["hd_mm"]["rv"] == (None, 0)
    mean, n = o["slices"]["hd95_mm"]["myo"]
    assert n == 2 and mean == pytest.approx(table["hd95_myo"].iloc[:2].mean())
    mean, n = o["slices"]["hd95_mm"]["lv"]
    assert n == 8 and mean > 0
    assert o["volumes"]["hd_mm"]["myo"][1] == 1  # only the ED volume has MYO
    assert o["slices"]["dice"]["mean"] == (pytest.approx(table["dice_mean"].mean()), 8)
    # the summary's HD mean counts the both-absent slices as 0: the overview does not
    assert table["hd95_rv"].mean() == 0.0
