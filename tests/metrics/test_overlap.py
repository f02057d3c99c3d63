"""Dice, Hausdorff and HD95 against MONAI's metrics, and the ACDC empty-mask conventions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from acdctool.errors import BadInputError
from acdctool.metrics.overlap import (
    CONVENTION_CODES,
    Convention,
    dice,
    dice_batch,
    hausdorff,
    hausdorff_batch,
    hausdorff_per_class,
    surface_distances,
)


def blobs(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 2.5) -> np.ndarray:
    """Label map with a smooth random blob per class (1, 2, 3), each ~12% of the voxels."""
    m = np.zeros(shape, np.uint8)
    for k in (1, 2, 3):
        field = ndimage.gaussian_filter(rng.random(shape), sigma)
        m[field > np.quantile(field, 0.88)] = k
    return m


def one_hot(m: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.moveaxis(np.eye(4, dtype=np.float32)[m], -1, 0)[None])


def monai_hd(pred: np.ndarray, gt: np.ndarray, spacing, percentile=None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_hausdorff_distance(
            one_hot(pred), one_hot(gt), spacing=list(spacing), percentile=percentile
        ).numpy()[0]


CASES = [
    ((72, 64), (1.3, 0.7)),  # 2D slice, anisotropic in-plane
    ((9, 40, 44), (8.0, 1.5, 1.1)),  # 3D volume: thickness, row, col
]


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_dice_matches_monai(shape, spacing):
    rng = np.random.default_rng(1)
    for _ in range(3):
        pred, gt = blobs(rng, shape), blobs(rng, shape)
        expected = compute_dice(one_hot(pred), one_hot(gt), include_background=False).numpy()[0]
        got = dice(pred, gt)
        np.testing.assert_allclose([got[k].value for k in (1, 2, 3)], expected, rtol=1e-6)
        assert all(got[k].convention is Convention.NORMAL for k in (1, 2, 3))


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_hausdorff_and_hd95_match_monai(shape, spacing):
    rng = np.random.default_rng(2)
    for _ in range(3):
        pred, gt = blobs(rng, shape), blobs(rng, shape)
        got = hausdorff_per_class(pred, gt, spacing)
        np.testing.assert_allclose([got[k].hd for k in (1, 2, 3)], monai_hd(pred, gt, spacing), rtol=1e-5)
        np.testing.assert_allclose([got[k].hd95 for k in (1, 2, 3)], monai_hd(pred, gt, spacing, 95), rtol=1e-5)
        for k in (1, 2, 3):  # the binary entry point agrees with the per-class one
            assert hausdorff(pred == k, gt == k, spacing) == got[k]


def test_hausdorff_matches_monai_on_masks_touching_the_border():
    rng = np.random.default_rng(3)
    pred, gt = blobs(rng, (32, 40), sigma=1.0), blobs(rng, (32, 40), sigma=1.0)
    pred[0, :] = 2  # surfaces on the array border count as surfaces
    got = hausdorff_per_class(pred, gt, (0.9, 1.7))
    np.testing.assert_allclose([got[k].hd95 for k in (1, 2, 3)], monai_hd(pred, gt, (0.9, 1.7), 95), rtol=1e-5)


def test_hausdorff_by_hand():
    a = np.zeros((9, 9), bool)
    a[2:5, 2:5] = True
    b = np.zeros((9, 9), bool)
    b[2:5, 4:7] = True  # shifted by 2 columns of 2 mm
    assert hausdorff(a, b, (1.0, 2.0)).hd == pytest.approx(4.0)
    assert hausdorff(a, b, (3.0, 0.5)).hd == pytest.approx(1.0)
    to_b, to_a = surface_distances(a, b, (1.0, 2.0))
    assert to_b.shape == (8,) and to_a.shape == (8,)  # 3×3 squares: 8 surface pixels each
    assert to_b.min() == 0.0  # the overlapping column


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    rng = np.random.default_rng(4)
    pred, gt = blobs(rng, (64, 64)) == 1, blobs(rng, (64, 64)) == 1
    to_gt, to_pred = surface_distances(pred, gt, (1.0, 1.0))
    expected = max(np.percentile(to_gt, 95), np.percentile(to_pred, 95))
    assert hausdorff(pred, gt, (1.0, 1.0)).hd95 == pytest.approx(expected)
    assert hausdorff(pred, gt, (1.0, 1.0)).hd == pytest.approx(max(to_gt.max(), to_pred.max()))


def test_empty_mask_conventions():
    empty = np.zeros((16, 16), np.uint8)
    lv = empty.copy()
    lv[4:9, 4:9] = 3
    both = dice(empty, empty)[3]
    assert both.value == 1.0 and both.convention is Convention.BOTH_EMPTY
    one = dice(lv, empty)[3]
    assert one.value == 0.0 and one.convention is Convention.ONE_EMPTY
    assert hausdorff_per_class(empty, empty, (1.0, 1.0))[3] == (0.0, 0.0, Convention.BOTH_EMPTY)
    s = hausdorff_per_class(empty, lv, (1.0, 1.0))[3]
    assert np.isnan(s.hd) and np.isnan(s.hd95) and s.convention is Convention.ONE_EMPTY
    assert Convention.ONE_EMPTY == "one_empty"  # str enum: serialises as its value


def test_batches_match_per_slice_functions():
    rng = np.random.default_rng(5)
    pred = np.stack([blobs(rng, (48, 40)) for _ in range(6)])
    gt = np.stack([blobs(rng, (48, 40)) for _ in range(6)])
    pred[1] = 0  # one empty: conventions in the batch
    gt[1][gt[1] == 2] = 0
    pred[2][pred[2] == 3] = 0
    gt[2][gt[2] == 3] = 0  # LV absent from both
    spacings = rng.uniform(0.6, 2.0, (6, 2))
    d, d_codes = dice_batch(pred, gt)
    hd, hd95, codes = hausdorff_batch(pred, gt, spacings)
    assert d.shape == hd.shape == hd95.shape == codes.shape == (6, 3)
    for i in range(6):
        ds, hs = dice(pred[i], gt[i]), hausdorff_per_class(pred[i], gt[i], spacings[i])
        for j, k in enumerate((1, 2, 3)):
            assert d[i, j] == pytest.approx(ds[k].value)
            assert CONVENTION_CODES[d_codes[i, j]] is ds[k].convention is CONVENTION_CODES[codes[i, j]]
            np.testing.assert_allclose([hd[i, j], hd95[i, j]], [hs[k].hd, hs[k].hd95], equal_nan=True)
    assert CONVENTION_CODES[codes[2, 2]] is Convention.BOTH_EMPTY and hd[2, 2] == 0.0
    assert CONVENTION_CODES[codes[1, 1]] is Convention.BOTH_EMPTY and d[1, 1] == 1.0
    assert CONVENTION_CODES[codes[1, 0]] is Convention.ONE_EMPTY and np.isnan(hd95[1, 0]) and d[1, 0] == 0.0


def test_dice_batch_spans_chunks():
    rng = np.random.default_rng(6)
    pred = rng.integers(0, 4, (600, 8, 8), dtype=np.uint8)  # more slices than one bincount chunk
    gt = rng.integers(0, 4, (600, 8, 8), dtype=np.uint8)
    d, _ = dice_batch(pred, gt)
    for i in (0, 511, 512, 599):
        assert d[i, 2] == pytest.approx(dice(pred[i], gt[i])[3].value)


@pytest.mark.parametrize(
    "call",
    [
        lambda: dice(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)),
        lambda: dice(np.full((4, 4), 5, np.uint8), np.zeros((4, 4), np.uint8)),
        lambda: dice(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)),
        lambda: dice(np.zeros(4, np.uint8), np.zeros(4, np.uint8)),
        lambda: dice_batch(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)),
        lambda: hausdorff(np.ones((4, 4), bool), np.ones((4, 4), bool), (1.0, 1.0, 1.0)),
        lambda: hausdorff(np.ones((4, 4), bool), np.ones((4, 4), bool), (1.0, 0.0)),
        lambda: hausdorff_batch(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), np.ones((3, 2))),
        lambda: surface_distances(np.zeros((4, 4), bool), np.ones((4, 4), bool), (1.0, 1.0)),
    ],
)
def test_bad_inputs_raise(call):
    with pytest.raises(BadInputError):
        call()
