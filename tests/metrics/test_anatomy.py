"""The 16 anatomical criteria on hand-made short-axis phantoms: one property broken at a time."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import convex_hull_image

from acdctool.errors import BadInputError
from acdctool.metrics import anatomy, shapes
from acdctool.metrics.anatomy import (
    CRITERIA,
    CRITERIA_NAMES,
    criteria_passed,
    evaluate_batch,
    evaluate_slice,
    failed_criteria,
    is_valid,
)

BG, RV, MYO, LV = 0, 1, 2, 3
SIZE = 128
CY, CX = 64, 72  # LV centre; the RV sits to its left
SP = (1.5, 1.5)

YY, XX = np.mgrid[:SIZE, :SIZE]
D_LV = np.hypot(YY - CY, XX - CX)
D_RV = np.hypot(YY - CY, XX - (CX - 18))


def heart() -> np.ndarray:
    """LV disc (r 10) in a MYO ring (r 10–16), RV crescent hugging the ring on the left: valid."""
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[(D_RV < 22) & (D_LV >= 16)] = RV
    m[D_LV < 16] = MYO
    m[D_LV < 10] = LV
    return m


def edit(**boxes: object):
    """Mask builder: the phantom with rectangles (row slice, col slice) set to a label."""

    def build() -> np.ndarray:
        m = heart()
        for (rows, cols), label in boxes.values():  # type: ignore[misc]
            m[rows, cols] = label
        return m

    return build


def where(cond, label: int):
    def build() -> np.ndarray:
        m = heart()
        m[cond(m)] = label
        return m

    return build


def elongated_lv() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[50:78, 20:110] = MYO
    m[63:66, 25:105] = LV  # 3 × 80 px slit: circularity ~0.11
    return m


def thin_myo() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[60:62, 20:100] = MYO  # 2 × 80 px bar: circularity ~0.07
    return m


BROKEN = {
    "holes_in_lv": edit(a=((slice(63, 65), slice(71, 73)), BG)),
    "holes_in_rv": edit(a=((slice(63, 65), slice(40, 42)), BG)),
    "holes_in_myo": edit(a=((slice(63, 65), slice(84, 86)), BG)),
    "disconnectivity_in_lv": edit(a=((slice(10, 11), slice(10, 11)), LV)),
    "disconnectivity_in_rv": edit(a=((slice(10, 13), slice(10, 13)), RV)),
    "disconnectivity_in_myo": edit(a=((slice(110, 112), slice(110, 112)), MYO)),
    "holes_between_lv_and_myo": where(lambda m: (D_LV >= 9) & (D_LV < 10), BG),
    "holes_between_rv_and_myo": where(lambda m: (m == RV) & (D_LV < 18) & (np.abs(YY - CY) <= 4), BG),
    "rv_disconnected_from_myo": where(lambda m: (m == RV) & (D_LV < 19), BG),
    "frontier_between_lv_and_rv": edit(a=((slice(62, 67), slice(50, 63)), RV)),
    "frontier_between_lv_and_background": edit(a=((slice(62, 67), slice(82, 90)), BG)),
    "lv_concavity": edit(a=((slice(62, 67), slice(76, 82)), MYO)),  # 5 px wide, 6 px deep notch
    "rv_concavity": heart,  # 12 px deep: fails at 3 mm (36 mm), see test_rv_concavity_follows_spacing
    "myo_concavity": edit(a=((slice(61, 68), slice(84, 89)), BG)),
    "lv_circularity": elongated_lv,
    "myo_circularity": thin_myo,
}
FAIL_SPACING = {"rv_concavity": (3.0, 3.0), "lv_concavity": (3.0, 3.0)}


def test_registry_has_the_16_criteria_in_reference_order():
    assert len(CRITERIA) == 16
    assert CRITERIA_NAMES[0] == "holes_in_lv" and CRITERIA_NAMES[-1] == "myo_circularity"
    assert set(BROKEN) == set(CRITERIA_NAMES)
    units = {c.name: c.unit for c in CRITERIA}
    assert units["rv_disconnected_from_myo"] == "mm" and units["lv_concavity"] == "mm"
    assert units["holes_in_lv"] == "px" and units["lv_circularity"] == "1"
    rules = {c.name: (c.rule, c.threshold) for c in CRITERIA}
    assert rules["lv_concavity"] == ("max", 4.0)
    assert rules["rv_concavity"] == ("max", 30.0)
    assert rules["myo_concavity"] == ("max", 0.0)
    assert rules["lv_circularity"] == rules["myo_circularity"] == ("min", 0.2)


def _random_masks(n: int, size: int, seed: int) -> np.ndarray:
    """Label maps from thresholded smooth noise (blobs, rings, fragments) and raw label noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    masks = []
    for i in range(n):
        field = ndimage.gaussian_filter(rng.random((size, size)), rng.uniform(0.5, 3.0))
        mask = np.digitize(field, np.quantile(field, np.sort(rng.uniform(0.2, 0.95, 3)))).astype(np.uint8)
        if i % 4 == 3:
            mask = rng.integers(0, 4, (size, size)).astype(np.uint8) * (rng.random((size, size)) < 0.3)
        masks.append(mask)
    ring = np.hypot(*(np.mgrid[:size, :size] - size / 2))
    masks += [np.zeros((size, size), np.uint8), np.where(ring < 6, LV, np.where(ring < 10, MYO, BG)).astype(np.uint8)]
    return np.stack(masks)


def test_registry_generates_one_function_per_criterion_matching_the_batch_evaluator():
    assert len(CRITERIA) == 16 and len(set(CRITERIA_NAMES)) == 16
    assert set(CRITERIA_NAMES) <= set(anatomy.__all__)
    masks = _random_masks(24, 40, seed=7)
    spacings = np.random.default_rng(8).uniform(0.6, 2.4, (len(masks), 2))
    values, valid = evaluate_batch(masks, spacings)
    for j, criterion in enumerate(CRITERIA):
        function = getattr(anatomy, criterion.name)
        assert function is criterion.func and function.__name__ == criterion.name
        assert function.__doc__.startswith(criterion.what) and f"Valid: {criterion.valid_when}." in function.__doc__
        for i, mask in enumerate(masks):
            np.testing.assert_array_equal(function(mask, spacings[i]), values[i, j], err_msg=criterion.name)
    assert 0 < valid.sum() < len(masks)  # the random masks exercise both outcomes
    assert {c.valid_when for c in CRITERIA} == {"0", "≤ 4 mm", "≤ 30 mm", "≤ 0 mm", "≥ 0.2"}


def test_base_phantom_passes_all_16():
    values = evaluate_slice(heart(), SP)
    assert failed_criteria(values) == []
    assert is_valid(heart(), SP)
    assert values["holes_in_myo"] == 0  # the LV cavity inside the ring is not a MYO hole
    assert values["myo_concavity"] == 0
    assert 0.9 < values["lv_circularity"] <= 1.05


@pytest.mark.parametrize("name", list(BROKEN))
def test_each_criterion_fails_on_its_broken_phantom(name):
    mask = BROKEN[name]()
    spacing = FAIL_SPACING.get(name, SP)
    values = evaluate_slice(mask, spacing)
    assert name in failed_criteria(values)
    assert not is_valid(mask, spacing)
    criterion = CRITERIA[CRITERIA_NAMES.index(name)]
    # The standalone function gives the value evaluate_slice reports.
    assert criterion.func(mask, spacing) == pytest.approx(values[name], nan_ok=True)
    assert not criterion.passes(values[name])
    assert criterion.passes(criterion.func(heart(), SP))


def test_counts_are_in_pixels():
    assert anatomy.holes_in_lv(BROKEN["holes_in_lv"](), SP) == 4
    assert anatomy.holes_in_myo(BROKEN["holes_in_myo"](), SP) == 4
    assert anatomy.disconnectivity_in_rv(BROKEN["disconnectivity_in_rv"](), SP) == 9
    assert anatomy.disconnectivity_in_myo(BROKEN["disconnectivity_in_myo"](), SP) == 4


def test_empty_mask_and_absent_structures_are_valid():
    empty = np.zeros((64, 64), np.uint8)
    values = evaluate_slice(empty, SP)
    assert is_valid(empty, SP)
    assert np.isnan(values["lv_concavity"]) and np.isnan(values["myo_circularity"])
    no_rv = heart()
    no_rv[no_rv == RV] = BG
    assert is_valid(no_rv, SP)
    assert np.isnan(evaluate_slice(no_rv, SP)["rv_concavity"])


def test_lv_concavity_follows_spacing():
    notched = BROKEN["lv_concavity"]()
    assert anatomy.lv_concavity(notched, (0.5, 0.5)) <= 4.0 < anatomy.lv_concavity(notched, (3.0, 3.0))
    assert anatomy.lv_concavity(notched, (3.0, 3.0)) == pytest.approx(6 * anatomy.lv_concavity(notched, (0.5, 0.5)))


def test_rv_concavity_follows_spacing():
    assert anatomy.rv_concavity(heart(), (1.5, 1.5)) <= 30.0 < anatomy.rv_concavity(heart(), (3.0, 3.0))


def test_rv_gap_is_in_mm():
    gap = BROKEN["rv_disconnected_from_myo"]()
    small, large = anatomy.rv_disconnected_from_myo(gap, (1.0, 1.0)), anatomy.rv_disconnected_from_myo(gap, (2.0, 2.0))
    assert small > 0 and large == pytest.approx(2 * small)


def test_holes_between_regions_tolerance_scales_with_image_size():
    one = heart()
    one[64, 81] = BG  # single background pixel between LV and MYO
    two = heart()
    two[64:66, 81] = BG
    assert anatomy.holes_between_lv_and_myo(one, SP) == 0  # 1 px tolerated at 128² (128²/2**14)
    assert anatomy.holes_between_lv_and_myo(two, SP) == 2
    assert anatomy.holes_between_lv_and_myo(np.pad(two, 64), SP) == 0  # 4 px tolerated at 256²


def test_single_touching_pixel_frontier_is_tolerated():
    m = np.zeros((16, 16), np.uint8)
    m[4:7, 4:7] = LV
    m[7, 7] = RV  # touches only the LV corner pixel, diagonally
    assert anatomy.frontier_between_lv_and_rv(m, SP) == 0
    m[7, 6] = RV
    assert anatomy.frontier_between_lv_and_rv(m, SP) > 1


def test_blocky_upsampled_edges_break_myo_concavity():
    small = np.zeros((32, 32), np.uint8)
    d = np.hypot(*(np.mgrid[:32, :32] - np.array([16, 18])[:, None, None]))
    small[d < 8] = MYO
    small[d < 4.8] = LV
    blocky = np.kron(small, np.ones((4, 4), np.uint8))  # nearest-neighbour ×4: 4-px stair steps
    assert anatomy.myo_concavity(small, SP) == 0
    assert anatomy.myo_concavity(blocky, SP) > 0


def test_structures_touching_the_border_have_no_holes_from_outside():
    m = heart()[:, 40:]  # the RV is cut by the left border
    values = evaluate_slice(m, SP)
    assert values["holes_in_rv"] == 0 and values["holes_between_rv_and_myo"] == 0


def test_batch_matches_single_slices():
    masks = np.stack([BROKEN[n]() for n in CRITERIA_NAMES] + [heart(), np.zeros((SIZE, SIZE), np.uint8)])
    spacings = np.tile(SP, (len(masks), 1))
    spacings[3] = (2.0, 1.0)
    values, valid = evaluate_batch(masks, spacings)
    assert values.shape == (18, 16) and valid.dtype == bool
    for i, m in enumerate(masks):
        np.testing.assert_allclose(values[i], list(evaluate_slice(m, spacings[i]).values()), equal_nan=True)
        assert valid[i] == is_valid(m, spacings[i])
    assert valid.tolist()[-2:] == [True, True] and valid[:16].sum() == 1  # rv_concavity passes at 1.5 mm
    assert criteria_passed(values).shape == (18, 16)


def test_convex_hull_matches_skimage():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = rng.integers(3, 30, 2)
        a = rng.random(shape) < rng.uniform(0.05, 0.6)
        if a.any():
            np.testing.assert_array_equal(shapes.convex_hull(a), convex_hull_image(a))
    np.testing.assert_array_equal(shapes.convex_hull(heart() == RV), convex_hull_image(heart() == RV))


@pytest.mark.parametrize(
    ("mask", "spacing"),
    [
        (np.zeros((4, 4, 4), np.uint8), SP),
        (np.full((8, 8), 4, np.uint8), SP),
        (np.zeros((8, 8), np.float32), SP),
        (np.zeros((8, 8), np.int16) - 1, SP),
        (np.zeros((8, 8), np.uint8), (1.0,)),
        (np.zeros((8, 8), np.uint8), (1.0, -1.0)),
    ],
)
def test_bad_inputs_raise(mask, spacing):
    with pytest.raises(BadInputError):
        evaluate_slice(mask, spacing)


def test_batch_bad_spacings_and_missing_values_raise():
    with pytest.raises(BadInputError):
        evaluate_batch(np.zeros((3, 8, 8), np.uint8), np.ones((2, 2)))
    with pytest.raises(BadInputError):
        failed_criteria({"holes_in_lv": 0.0})


@pytest.mark.real
def test_real_acdc_ground_truth_validity_matches_the_reference_code(acdc_dir):
    # Patients 001-010 at native resolution: the published criteria code (vitalab/vital) finds
    # exactly two invalid slices among the 202, both basal (patient003, slice 0, ED and ES).
    nib = pytest.importorskip("nibabel")
    invalid, total = [], 0
    for path in sorted(acdc_dir.glob("patient0[01][0-9]/*_gt.nii.gz")):
        if int(path.name[7:10]) > 10:
            continue
        img = nib.load(path)
        masks = np.moveaxis(np.asarray(img.dataobj, dtype=np.uint8), -1, 0)
        _, valid = evaluate_batch(masks, img.header.get_zooms()[:2])
        invalid += [(path.name, int(k)) for k in np.flatnonzero(~valid)]
        total += len(masks)
    assert total == 202
    assert invalid == [("patient003_frame01_gt.nii.gz", 0), ("patient003_frame15_gt.nii.gz", 0)]
