"""The ``prep`` stage: rows, splits and folds, geometry (spacing, crop box, areas), workers, test split, no-gt ROI."""

from __future__ import annotations

import numpy as np
import pytest

from acdctool.config import PrepConfig
from acdctool.conventions import FOREGROUND, GROUPS
from acdctool.io.acdc import find_patients, load_frame, read_info
from acdctool.io.slices import SliceFile
from acdctool.stages import prep


def _volumes(root):
    """(patient, phase) -> Frame, read straight from the NIfTI files."""
    out = {}
    for p in find_patients(root):
        info = read_info(p.path)
        for phase, f in (("ED", info.ed), ("ES", info.es)):
            out[p.name, phase] = load_frame(p, f)
    return out


def test_round_trip_rows_splits_and_spacing(prepped, synth_root):
    vols = _volumes(synth_root / "training")
    with SliceFile(prepped, kinds=("prep",)) as f:
        idx = f.index
        assert len(f) == sum(v.image.shape[2] for v in vols.values())
        assert f.shape == (64, 64) and set(f.arrays) == {"image", "gt"}
        assert set(idx.split) <= {"train", "val"} and idx.patient.nunique() == 5
        assert set(idx.fold) == {0, 1}
        # one split and fold per patient: never split a patient between sets
        assert (idx.groupby("patient")[["split", "fold"]].nunique() == 1).all().all()
        for (patient, phase), v in vols.items():
            rows = idx[(idx.patient == patient) & (idx.phase == phase)]
            assert rows.slice.tolist() == list(range(v.image.shape[2]))
            assert (rows.n_slices == v.image.shape[2]).all()
            crop = rows.crop_size.iloc[0]
            assert rows.spacing_row.iloc[0] == pytest.approx(v.spacing[0] * crop / 64, rel=1e-5)
            assert rows.thickness.iloc[0] == pytest.approx(v.spacing[2])
            assert (rows.orig_rows == v.image.shape[0]).all()
        images, gt = f.read("image"), f.read("gt")
        assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
        assert set(np.unique(gt)) <= {0, 1, 2, 3}


def test_mask_area_in_mm2_preserved(prepped, synth_root):
    """Crop + resize must keep each structure's physical area (geometry is correctness)."""
    vols = _volumes(synth_root / "training")
    with SliceFile(prepped) as f:
        idx, gt = f.index, f.read("gt")
    for (patient, phase), v in vols.items():
        rows = np.flatnonzero((idx.patient == patient) & (idx.phase == phase))
        px_mm2 = idx.spacing_row.iloc[rows[0]] * idx.spacing_col.iloc[rows[0]]
        for label in FOREGROUND:
            before = (v.mask == label).sum() * v.spacing[0] * v.spacing[1]
            after = (gt[rows] == label).sum() * px_mm2
            assert after == pytest.approx(before, rel=0.05), (patient, phase, label)


def test_crop_maps_back_to_original_position(prepped, synth_root):
    """The LV centroid, mapped back through the stored crop box, lands where it was."""
    vols = _volumes(synth_root / "training")
    with SliceFile(prepped) as f:
        idx, gt = f.index, f.read("gt")
    for (patient, phase), v in vols.items():
        rows = np.flatnonzero((idx.patient == patient) & (idx.phase == phase))
        r0, c0, size = idx.loc[rows[0], ["crop_r0", "crop_c0", "crop_size"]]
        lv_new = np.argwhere(gt[rows] == 3)[:, 1:].mean(axis=0)
        scale = size / 64
        mapped = np.array([r0, c0]) - 0.5 + (lv_new + 0.5) * scale
        lv_orig = np.argwhere(v.mask.transpose(2, 0, 1) == 3)[:, 1:].mean(axis=0)
        assert np.abs(mapped - lv_orig).max() < 1.0, (patient, phase)


def test_workers_do_not_change_output(synth_root, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    prep.run(PrepConfig(size=32, workers=1), prep.Inputs(synth_root / "training"), a)
    prep.run(PrepConfig(size=32, workers=2), prep.Inputs(synth_root / "training"), b)
    with SliceFile(a) as fa, SliceFile(b) as fb:
        np.testing.assert_array_equal(fa.read("image"), fb.read("image"))
        np.testing.assert_array_equal(fa.read("gt"), fb.read("gt"))
        assert fa.index.equals(fb.index)


def test_testing_patients_are_test_split(synth_root, tmp_path):
    out = tmp_path / "all.h5"
    res = prep.run(PrepConfig(size=32), prep.Inputs(synth_root), out)
    assert res.patients == 7
    with SliceFile(out) as f:
        per = f.index.drop_duplicates("patient").set_index("patient")
    test = per[per.split == "test"]
    assert len(test) == 2 and (test.fold == -1).all()


def test_center_roi_without_ground_truth(acdc_copy, tmp_path):
    for gt in acdc_copy.glob("*/*_gt.nii.gz"):
        gt.unlink()
    out = tmp_path / "nogt.h5"
    prep.run(PrepConfig(size=32, roi="center", roi_mm=150), prep.Inputs(acdc_copy), out)
    with SliceFile(out) as f:
        assert "gt" not in f.arrays and len(f) > 0
        frame = load_frame(find_patients(acdc_copy)[0], 1, with_mask=False)
        side = f.index.crop_size.iloc[0]
        assert side == round(150 / frame.spacing[0])


@pytest.mark.real
@pytest.mark.slow
def test_real_acdc_prep(acdc_prepped):
    with SliceFile(acdc_prepped) as f:
        s = f.summary()
        idx = f.index
    assert s["patients_per_group"] == {g: 20 for g in sorted(GROUPS)}
    assert s["volumes"] == 200 and 1850 <= s["rows"] <= 1950
    p1 = idx[idx.patient == "patient001"].iloc[0]
    assert p1.spacing_row == pytest.approx(1.5625 * p1.crop_size / 128, rel=1e-5)
    assert p1.thickness == pytest.approx(10.0)
