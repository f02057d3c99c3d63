"""Volumes, ejection fraction, myocardial mass and agreement statistics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from acdctool.errors import BadInputError
from acdctool.metrics.clinical import (
    agreement,
    clinical_indices,
    ejection_fraction,
    myocardial_mass,
    slice_volumes,
    volumes_ml,
)

SPACING = (1.25, 0.8)  # row, col mm
THICKNESS = 7.5  # mm -> one voxel is 7.5 mm³


def frame(lv_rows: int) -> np.ndarray:
    """6 slices of 20×30: an LV box of lv_rows×6 px on slices 1–3, MYO 2×10 px, RV 4×5 px on slice 2."""
    m = np.zeros((6, 20, 30), np.uint8)
    m[1:4, 2 : 2 + lv_rows, 3:9] = 3
    m[1:4, 15:17, 10:20] = 2
    m[2, 0:4, 20:25] = 1
    return m


def test_volumes_by_hand():
    vols = volumes_ml(frame(5), SPACING, THICKNESS)
    assert vols["lv"] == pytest.approx(3 * 5 * 6 * 7.5 / 1000)  # 90 voxels of 7.5 mm³ = 0.675 mL
    assert vols["myo"] == pytest.approx(3 * 2 * 10 * 7.5 / 1000)
    assert vols["rv"] == pytest.approx(4 * 5 * 7.5 / 1000)


def test_cylinder_volume_approaches_pi_r2_h():
    yy, xx = np.mgrid[:200, :200]
    disc = np.hypot(yy - 100, xx - 100) < 80  # r = 80 px of 0.5 mm = 40 mm
    stack = np.repeat(disc[None], 10, axis=0).astype(np.uint8) * 3  # 10 slices of 8 mm = 80 mm
    expected_ml = np.pi * 40.0**2 * 80.0 / 1000
    assert volumes_ml(stack, (0.5, 0.5), 8.0)["lv"] == pytest.approx(expected_ml, rel=5e-3)
    assert volumes_ml(stack, (0.5, 0.5), 8.0)["lv"] == pytest.approx(disc.sum() * 10 * 2.0 / 1000)


def test_clinical_indices_by_hand():
    ed, es = frame(10), frame(4)
    idx = clinical_indices(ed, es, SPACING, THICKNESS)
    edv, esv = 3 * 10 * 6 * 7.5 / 1000, 3 * 4 * 6 * 7.5 / 1000
    assert idx["lv_edv"] == pytest.approx(edv) and idx["lv_esv"] == pytest.approx(esv)
    assert idx["lv_ef"] == pytest.approx(60.0)
    assert idx["rv_ef"] == pytest.approx(0.0)  # same RV at ED and ES
    assert idx["myo_mass"] == pytest.approx(1.05 * 3 * 2 * 10 * 7.5 / 1000)


def test_ejection_fraction_and_mass():
    assert np.isnan(ejection_fraction(0.0, 0.0))
    np.testing.assert_allclose(
        ejection_fraction(np.array([100.0, 0.0, 80.0]), np.array([40.0, 0.0, 20.0])), [60.0, np.nan, 75.0]
    )
    assert myocardial_mass(100.0) == pytest.approx(105.0)
    no_lv = clinical_indices(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), (1.0, 1.0), 5.0)
    assert np.isnan(no_lv["lv_ef"])


def test_slice_volumes_sum_to_frame_volumes():
    masks = np.concatenate([frame(10), frame(4)])
    spacings = np.array([SPACING] * 6 + [(1.0, 1.0)] * 6)
    thickness = np.array([THICKNESS] * 6 + [5.0] * 6)
    per_slice = slice_volumes(masks, spacings, thickness)
    assert per_slice.shape == (12, 3)
    ed = volumes_ml(frame(10), SPACING, THICKNESS)
    es = volumes_ml(frame(4), (1.0, 1.0), 5.0)
    np.testing.assert_allclose(per_slice[:6].sum(0), [ed["rv"], ed["myo"], ed["lv"]])
    np.testing.assert_allclose(per_slice[6:].sum(0), [es["rv"], es["myo"], es["lv"]])


def test_agreement_matches_numpy_and_scipy():
    rng = np.random.default_rng(0)
    ref = rng.uniform(20, 70, 50)
    pred = ref + rng.normal(2.0, 3.0, 50)
    a = agreement(pred, ref)
    d = pred - ref
    assert a["n"] == 50
    assert a["corr"] == pytest.approx(stats.pearsonr(pred, ref)[0])
    assert a["bias"] == pytest.approx(d.mean())
    assert a["std"] == pytest.approx(np.std(d, ddof=1))
    assert agreement(pred, ref, ddof=0)["std"] == pytest.approx(np.std(d))
    assert a["mae"] == pytest.approx(np.abs(d).mean())


def test_agreement_known_series_and_nan_pairs():
    a = agreement([10.0, 20.0, np.nan, 40.0], [12.0, 18.0, 30.0, np.nan])
    assert a["n"] == 2
    assert a["bias"] == pytest.approx(0.0) and a["mae"] == pytest.approx(2.0)
    assert a["corr"] == pytest.approx(1.0)  # two points always lie on a line
    flat = agreement([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])
    assert np.isnan(flat["corr"]) and flat["bias"] == pytest.approx(3.0)
    assert np.isnan(agreement([np.nan], [1.0])["bias"])


@pytest.mark.parametrize(
    "call",
    [
        lambda: volumes_ml(np.full((2, 4, 4), 7, np.uint8), SPACING, THICKNESS),
        lambda: volumes_ml(np.zeros((2, 4, 4), np.uint8), (1.0,), THICKNESS),
        lambda: volumes_ml(np.zeros((2, 4, 4), np.uint8), SPACING, 0.0),
        lambda: slice_volumes(np.zeros((2, 4, 4), np.uint8), SPACING, [1.0, 2.0, 3.0]),
        lambda: agreement([1.0, 2.0], [1.0]),
    ],
)
def test_bad_inputs_raise(call):
    with pytest.raises(BadInputError):
        call()
