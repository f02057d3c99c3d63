"""`acdctool prep` on an nnU-Net raw dataset (imagesTr/labelsTr/imagesTs + dataset.json), and `--roi heart`."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.slices import SliceFile

runner = CliRunner()
GEOMETRY = ["patient", "phase", "frame", "slice", "n_slices", "spacing_row", "thickness", "crop_r0", "crop_size"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def acdc_prep(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep-acdc") / "acdc.h5"
    assert invoke("prep", synth_root / "training", "-o", out, "--size", 64, "--folds", 2, "-q").exit_code == 0
    return out


def test_raw_dataset_preps_like_the_acdc_folder(nnunet_raw, acdc_prep, tmp_path):
    out = tmp_path / "raw.h5"
    res = invoke("prep", nnunet_raw, "-o", out, "--size", 64, "--folds", 2)
    assert res.exit_code == 0, res.output
    assert "skipped testing (4 cases)" in res.output  # imagesTs has no labels: prepped on its own
    with SliceFile(out) as a, SliceFile(acdc_prep) as b:
        assert a.index[GEOMETRY].equals(b.index[GEOMETRY])
        assert np.array_equal(a.read("image"), b.read("image")) and np.array_equal(a.read("gt"), b.read("gt"))
        assert {"case", "source_image", "source_gt"} <= set(a.index.columns)
    nifti = tmp_path / "gt"
    res = invoke("export", out, "--array", "gt", "-o", nifti, "-q")  # no --like: the sources are recorded
    assert res.exit_code == 0, res.output
    for f in sorted(nifti.glob("*_gt.nii.gz")):
        src = nnunet_raw / "labelsTr" / f.name.replace("_gt", "")
        assert np.array_equal(np.asanyarray(nib.load(f).dataobj), np.asanyarray(nib.load(src).dataobj))


def test_label_coding_from_dataset_json(write_nnunet, synth_root, acdc_prep, tmp_path):
    raw = write_nnunet(synth_root, tmp_path / "raw", coding={"background": 0, "LV": 1, "MYO": 2, "RV": 3})
    out = tmp_path / "raw.h5"
    assert invoke("prep", raw, "-o", out, "--size", 64, "--folds", 2, "-q").exit_code == 0
    with SliceFile(out) as a, SliceFile(acdc_prep) as b:
        assert np.array_equal(a.read("gt"), b.read("gt"))


def test_unmapped_dataset_json_is_one_line_naming_it(nnunet_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(nnunet_raw, raw)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "RV": 1, "LV": 2, "scar": 3}}))
    out = tmp_path / "x.h5"
    res = invoke("prep", raw, "-o", out, "-q")
    assert res.exit_code == 65 and f"{raw / 'dataset.json'}: labels 'scar' do not map" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_other_case_names_are_volumes_of_their_own(nnunet_raw, tmp_path):
    raw = tmp_path / "raw"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
        for i, f in enumerate(sorted((nnunet_raw / sub).glob("patient00[12]*"))):
            name = f"heart_{i:03d}_0000.nii.gz" if sub == "imagesTr" else f"heart_{i:03d}.nii.gz"
            shutil.copy(f, raw / sub / name)
    shutil.copy(nnunet_raw / "dataset.json", raw)
    out = tmp_path / "x.h5"
    assert invoke("prep", raw, "-o", out, "--size", 64, "--folds", 2, "--val-fraction", 0, "-q").exit_code == 0
    with SliceFile(out) as f:
        first = f.index.drop_duplicates("patient")
    assert sorted(first.patient) == [f"heart_{i:03d}" for i in range(4)]
    assert set(first.phase) == {"ED"} and set(first.frame) == {1}


def test_images_folder_alone_without_labels(nnunet_raw, tmp_path):
    out = tmp_path / "ts.h5"
    res = invoke("prep", nnunet_raw / "imagesTs", "-o", out, "--size", 64, "-q")
    assert res.exit_code == 65 and "--roi center" in res.output and not out.exists()
    assert invoke("prep", nnunet_raw / "imagesTs", "-o", out, "--size", 64, "--roi", "center", "-q").exit_code == 0
    with SliceFile(out) as f:
        assert not f.has("gt") and set(f.index.split) == {"test"} and f.index.patient.nunique() == 2
        assert set(f.index.phase) == {"ED", "ES"}


def test_roi_heart_is_a_fixed_mm_square_centred_on_the_heart(synth_root, tmp_path):
    from acdctool.data.crop_rule import heart_centred_box

    out = tmp_path / "heart.h5"
    res = invoke("prep", synth_root / "training", "-o", out, "--size", 64, "--roi", "heart", "--roi-mm", 180, "-q")
    assert res.exit_code == 0, res.output
    with SliceFile(out) as f:
        index = f.index
        assert f.config["roi"] == "heart"
    row = index[index.patient == "patient002"].iloc[0]
    masks = [
        np.asanyarray(nib.load(p).dataobj) for p in sorted((synth_root / "training" / "patient002").glob("*_gt.nii.gz"))
    ]
    heart = np.zeros(masks[0].shape[:2], bool)
    for m in masks:
        heart |= m.any(axis=2)
    zooms = nib.load(next((synth_root / "training" / "patient002").glob("*_gt.nii.gz"))).header.get_zooms()
    box = heart_centred_box(heart, zooms, 180.0)
    assert (row.crop_r0, row.crop_c0, row.crop_size) == (box.r0, box.c0, box.size)
    assert row.crop_size == round(180 / min(zooms[:2]))
    assert row.spacing_row == pytest.approx(zooms[0] * box.size / 64, rel=1e-5)
