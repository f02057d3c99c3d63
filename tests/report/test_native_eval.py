"""`acdctool eval` at native resolution, checked against an independent nibabel + scipy computation."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from acdctool.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def oracle(pred: np.ndarray, gt: np.ndarray, zooms) -> dict[str, float]:
    """ACDC's metrics written out from scratch: Dice, HD (mm, surfaces by 6-connected erosion, as
    medpy does), volumes (mL); both empty: Dice 1, HD 0; one empty: Dice 0, HD NaN."""
    out: dict[str, float] = {}
    cross = ndimage.generate_binary_structure(3, 1)
    for label, name in ((1, "rv"), (2, "myo"), (3, "lv")):
        p, g = pred == label, gt == label
        out[f"ml_{name}_pred"] = p.sum() * float(np.prod(zooms)) / 1000
        out[f"ml_{name}_gt"] = g.sum() * float(np.prod(zooms)) / 1000
        if not p.any() and not g.any():
            out[f"dice_{name}"], out[f"hd_{name}"] = 1.0, 0.0
            continue
        if not p.any() or not g.any():
            out[f"dice_{name}"], out[f"hd_{name}"] = 0.0, math.nan
            continue
        out[f"dice_{name}"] = 2 * (p & g).sum() / (p.sum() + g.sum())
        sp = p ^ ndimage.binary_erosion(p, cross, border_value=0)
        sg = g ^ ndimage.binary_erosion(g, cross, border_value=0)
        to_g = ndimage.distance_transform_edt(~sg, sampling=zooms)[sp]
        to_p = ndimage.distance_transform_edt(~sp, sampling=zooms)[sg]
        out[f"hd_{name}"] = max(to_g.max(), to_p.max())
    return out


@pytest.fixture()
def native_case(acdc_copy, tmp_path):
    """Two patients' ground truth (patient002 ED without RV) and perturbed predictions in a flat folder."""
    gt_dir = acdc_copy
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    for patient in ("patient001", "patient002"):
        for gt_path in sorted((gt_dir / patient).glob("*_gt.nii.gz")):
            img = nib.load(gt_path)
            gt = np.asanyarray(img.dataobj).copy()
            if patient == "patient002" and gt_path.name.endswith("frame01_gt.nii.gz"):
                gt[gt == 1] = 0  # RV absent from the ground truth ...
                nib.Nifti1Image(gt, img.affine, img.header).to_filename(gt_path)
            pred = gt.copy()
            pred = np.where(pred == 3, 0, pred)
            pred[np.roll(gt == 3, 1, axis=0)] = 3  # LV shifted by one row
            myo = pred == 2
            pred[myo & ~ndimage.binary_erosion(myo)] = 0 if rng.random() < 0.5 else 2
            if patient == "patient001" and "frame01" not in gt_path.name:
                pred[pred == 1] = 0  # RV missed entirely (one mask empty)
            name = gt_path.name.replace("_gt.nii.gz", "_pred.nii.gz")
            nib.Nifti1Image(pred.astype(np.uint8), img.affine, img.header).to_filename(pred_dir / name)
    return pred_dir, gt_dir


def test_folder_eval_matches_the_independent_computation(native_case, tmp_path):
    pred_dir, gt_dir = native_case
    out = tmp_path / "report"
    res = invoke("eval", pred_dir, "--gt", gt_dir, "-o", out, "--workers", 1, "-q")
    assert res.exit_code == 0, res.output
    volumes = pd.read_csv(out / "volumes.csv").set_index("case")
    assert len(volumes) == 4
    expected_ml = {}
    for pred_path in sorted(pred_dir.glob("*.nii.gz")):
        key = pred_path.name[: -len("_pred.nii.gz")]
        gt_img = nib.load(gt_dir / key[:10] / f"{key}_gt.nii.gz")
        zooms = tuple(float(z) for z in gt_img.header.get_zooms())  # pixdim: the affine says 1 mm
        ref = oracle(np.asanyarray(nib.load(pred_path).dataobj), np.asanyarray(gt_img.dataobj), zooms)
        expected_ml[key] = ref
        row = volumes.loc[key]
        for name in ("rv", "myo", "lv"):
            assert row[f"dice_{name}"] == pytest.approx(ref[f"dice_{name}"], rel=1e-5), (key, name)
            if math.isnan(ref[f"hd_{name}"]):
                assert math.isnan(row[f"hd_{name}"]), (key, name)
            else:
                assert row[f"hd_{name}"] == pytest.approx(ref[f"hd_{name}"], rel=1e-5), (key, name)  # CSV: 6 digits
    assert volumes.loc["patient002_frame01", "dice_rv"] == 1.0 and volumes.loc["patient002_frame01", "hd_rv"] == 0.0
    assert volumes.loc["patient001_frame01", "hd_lv"] > 0  # the shift is measured, in mm
    clinical = pd.read_csv(out / "clinical.csv").set_index("patient")
    for patient in ("patient001", "patient002"):
        ed, es = (f"{patient}_frame{int(clinical.loc[patient, k]):02d}" for k in ("ed_frame", "es_frame"))
        for src in ("pred", "gt"):
            lv_edv, lv_esv = expected_ml[ed][f"ml_lv_{src}"], expected_ml[es][f"ml_lv_{src}"]
            assert clinical.loc[patient, f"lv_edv_{src}"] == pytest.approx(lv_edv, rel=1e-5)
            assert clinical.loc[patient, f"lv_ef_{src}"] == pytest.approx(100 * (lv_edv - lv_esv) / lv_edv, rel=1e-5)
            mass = 1.05 * expected_ml[ed][f"ml_myo_{src}"]
            assert clinical.loc[patient, f"myo_mass_{src}"] == pytest.approx(mass, rel=1e-5)
    slices = pd.read_csv(out / "slices.csv")
    n_slices = sum(nib.load(p).shape[2] for p in pred_dir.glob("*.nii.gz"))
    assert len(slices) == n_slices and {"anat_lv_concavity", "valid"} <= set(slices.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resolution"] == "native" and set(summary["acdc"]["pred"]) == {"ED", "ES"}
    assert (out / "dice_violin.png").is_file()


def test_criteria_use_the_native_spacing(native_case, tmp_path):
    from acdctool.metrics import anatomy

    pred_dir, gt_dir = native_case
    out = tmp_path / "r"
    assert invoke("eval", pred_dir, "--gt", gt_dir, "-o", out, "--no-plots", "--no-hausdorff", "-q").exit_code == 0
    slices = pd.read_csv(out / "slices.csv")
    path = pred_dir / "patient001_frame01_pred.nii.gz"
    img = nib.load(path)
    stack = np.ascontiguousarray(np.asanyarray(img.dataobj).transpose(2, 0, 1))
    zooms = img.header.get_zooms()[:2]
    values, valid = anatomy.evaluate_batch(stack, np.tile(zooms, (len(stack), 1)))
    mine = slices[slices.case == "patient001_frame01"].sort_values("slice")
    assert np.array_equal(mine.valid.to_numpy(), valid)
    j = anatomy.CRITERIA_NAMES.index("lv_concavity")
    assert np.allclose(mine.anat_lv_concavity.to_numpy(), values[:, j], equal_nan=True)


def test_folder_eval_bad_inputs_write_nothing(native_case, tmp_path):
    pred_dir, gt_dir = native_case
    out = tmp_path / "r"
    res = invoke("eval", pred_dir, "-o", out)
    assert res.exit_code == 2 and "--gt GT_DIR" in res.output and not out.exists()
    nib.Nifti1Image(np.zeros((5, 5, 2), np.uint8), np.eye(4)).to_filename(pred_dir / "patient009_frame01_pred.nii.gz")
    res = invoke("eval", pred_dir, "--gt", gt_dir, "-o", out)
    assert res.exit_code == 65 and "patient009_frame01_pred.nii.gz: prediction without ground truth" in res.output
    assert not out.exists()
    (pred_dir / "patient009_frame01_pred.nii.gz").unlink()
    bad = pred_dir / "patient001_frame01_pred.nii.gz"
    img = nib.load(bad)
    nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :-1], img.affine, img.header).to_filename(bad)
    res = invoke("eval", pred_dir, "--gt", gt_dir, "-o", out, "-q")
    assert res.exit_code == 65 and "patient001_frame01_pred.nii.gz: prediction shape" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_slice_file_native_through_export(synth_root, tmp_path):
    from acdctool.config import PrepConfig
    from acdctool.stages import prep

    h5 = tmp_path / "s.h5"
    prep.run(PrepConfig(size=96, workers=1), prep.Inputs(synth_root / "training"), h5)
    out = tmp_path / "native"
    res = invoke("eval", h5, "--native", "--like", synth_root / "training", "-o", out, "-q", "--no-plots")
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resolution"] == "native" and summary["volumes"]["n"] == 10
    assert min(summary["volumes"]["dice"][c] for c in ("rv", "myo", "lv")) > 0.95  # resampling only
    res = invoke("eval", h5, "--native", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "--like" in res.output
    res = invoke("eval", h5, "--native", "--like", synth_root / "training", "--baseline", h5, "-o", tmp_path / "y")
    assert res.exit_code == 2 and not (tmp_path / "y").exists()
