"""NIfTI volumes from other tools: 3D checks, grid checks, label maps, masks written over an image."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from acdctool.data.synth import save_acdc_nifti
from acdctool.errors import BadInputError, ConfigError, InputMissingError
from acdctool.io.labelmap import IDENTITY, label_map_from, parse_label_spec, read_dataset_json
from acdctool.io.nifti import check_same_grid, read_volume, save_mask_like, to_labels

SPACING = (1.25, 1.5, 8.0)


def _write(path, shape=(20, 24, 5), value=None, spacing=SPACING, dtype=np.int16, affine=None):
    data = np.zeros(shape, dtype) if value is None else np.asarray(value, dtype)
    if affine is None:
        save_acdc_nifti(data, spacing, path)  # ACDC's trap: unit affine, spacing in pixdim only
    else:
        nib.Nifti1Image(data, affine).to_filename(path)
    return path


def test_spacing_comes_from_pixdim_not_the_unit_affine(tmp_path):
    vol = read_volume(_write(tmp_path / "a.nii.gz"))
    assert vol.spacing == SPACING
    assert np.allclose(np.abs(np.diag(vol.affine))[:3], 1.0)  # the affine says 1 mm: not used for spacing


@pytest.mark.parametrize("shape", [(20, 24), (20, 24, 5, 3)])
def test_2d_and_4d_are_refused_naming_the_file(tmp_path, shape):
    path = _write(tmp_path / "x.nii.gz", shape=shape, spacing=SPACING[: len(shape)] + (1.0,) * max(0, len(shape) - 3))
    with pytest.raises(BadInputError, match=r"x\.nii\.gz: expected a 3D volume"):
        read_volume(path)


def test_4d_is_read_when_allowed_and_a_trailing_unit_axis_is_3d(tmp_path):
    assert read_volume(
        _write(tmp_path / "c.nii.gz", shape=(8, 8, 3, 4), spacing=(*SPACING, 1.0)), allow_4d=True
    ).shape == (8, 8, 3, 4)
    assert read_volume(_write(tmp_path / "d.nii.gz", shape=(8, 8, 3, 1), spacing=(*SPACING, 1.0))).shape == (8, 8, 3)


def test_missing_file(tmp_path):
    with pytest.raises(InputMissingError):
        read_volume(tmp_path / "nope.nii.gz")


def test_grid_checks_name_the_mask(tmp_path):
    image = read_volume(_write(tmp_path / "img.nii.gz"))
    assert check_same_grid(image, read_volume(_write(tmp_path / "ok.nii.gz", dtype=np.uint8))) is None
    with pytest.raises(BadInputError, match=r"shape\.nii\.gz: mask shape \(20, 24, 6\) differs"):
        check_same_grid(image, read_volume(_write(tmp_path / "shape.nii.gz", shape=(20, 24, 6))))
    shifted = np.diag([-1.0, -1.0, 1.0, 1.0])
    shifted[0, 3] = 5.0
    with pytest.raises(BadInputError, match=r"aff\.nii\.gz: mask affine differs"):
        check_same_grid(image, read_volume(_write(tmp_path / "aff.nii.gz", affine=shifted)))
    with pytest.raises(BadInputError, match=r"zoom\.nii\.gz: mask voxel size"):
        check_same_grid(image, read_volume(_write(tmp_path / "zoom.nii.gz", spacing=(1.0, 1.5, 8.0))))


def test_labels_are_mapped_and_values_outside_the_map_refused(tmp_path):
    data = np.zeros((4, 4, 2), np.uint8)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 0] = 1, 2, 3
    vol = read_volume(_write(tmp_path / "m.nii.gz", value=data, dtype=np.uint8))
    swapped = parse_label_spec("LV=1,MYO=2,RV=3")
    out = to_labels(vol, swapped)
    assert out[0, 0, 0] == 3 and out[1, 1, 1] == 2 and out[2, 2, 0] == 1 and out.dtype == np.uint8
    assert np.array_equal(to_labels(vol, IDENTITY), data)
    data[3, 3, 1] = 7
    bad = read_volume(_write(tmp_path / "bad.nii.gz", value=data, dtype=np.uint8))
    with pytest.raises(BadInputError, match=r"bad\.nii\.gz: labels 7 outside the label map"):
        to_labels(bad, IDENTITY)
    probs = read_volume(_write(tmp_path / "p.nii.gz", value=data * 0.5, dtype=np.float32))
    with pytest.raises(BadInputError, match="non-integer"):
        to_labels(probs, IDENTITY)


def test_saved_mask_keeps_the_image_header_and_spacing(tmp_path):
    image = read_volume(_write(tmp_path / "img.nii.gz"))
    mask = np.zeros(image.shape, np.uint8)
    mask[3:9, 4:10, 1:4] = 3
    save_mask_like(mask, image, tmp_path / "mask.nii.gz")
    out = nib.load(tmp_path / "mask.nii.gz")
    src = nib.load(tmp_path / "img.nii.gz")
    assert out.header.get_zooms() == src.header.get_zooms() and np.array_equal(out.affine, src.affine)
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 0)
    assert np.array_equal(np.asanyarray(out.dataobj), mask)
    cine = read_volume(_write(tmp_path / "cine.nii.gz", shape=(20, 24, 5, 3), spacing=(*SPACING, 30.0)), allow_4d=True)
    save_mask_like(mask, cine, tmp_path / "frame.nii.gz")
    assert nib.load(tmp_path / "frame.nii.gz").header.get_zooms() == SPACING


@pytest.mark.parametrize(
    "labels",
    [
        {"background": 0, "RV": 1, "MLV": 2, "LVC": 3},  # nnU-Net v2, its ACDC dataset's names
        {"0": "background", "1": "right ventricle", "2": "Myocardium", "3": "left_ventricle"},  # v1
    ],
)
def test_dataset_json_names_map_case_insensitively(tmp_path, labels):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels}))
    assert read_dataset_json(path) == {0: 0, 1: 1, 2: 2, 3: 3}


def test_dataset_json_with_other_values(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "LV": 1, "myo": 2, "RV": 3}}))
    assert read_dataset_json(path) == {0: 0, 1: 3, 2: 2, 3: 1}


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"background": 0, "aorta": 1, "MYO": 2, "LV": 3}, "'aorta' do not map to RV/MYO/LV"),
        ({"background": 0, "MYO": 2, "LV": 3}, "no label for RV"),
        ({"background": 0, "RV": 1, "MYO": 2, "LV": 3, "left ventricle": 4}, "both mean LV"),
        ({"background": 0, "RV": [1, 2], "MYO": 2, "LV": 3}, "region-based"),
    ],
)
def test_dataset_json_that_does_not_map_is_one_line_naming_the_file(tmp_path, labels, message):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels}))
    with pytest.raises(BadInputError, match=message) as info:
        read_dataset_json(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_label_map_sources(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "LV": 1, "MYO": 2, "RV": 3}}))
    assert label_map_from(None, [tmp_path / "none", tmp_path])[0] == {0: 0, 1: 3, 2: 2, 3: 1}
    assert label_map_from(None, [tmp_path / "none"]) == (IDENTITY, "acdc (0 background, 1 RV, 2 MYO, 3 LV)")
    assert label_map_from("RV=1,MYO=2,LV=3", [tmp_path])[0] == IDENTITY
    with pytest.raises(ConfigError):
        parse_label_spec("RV=1,MYO")
