"""Finding images, predictions and ground truth by name (nnU-Net, ACDC, manifest); ED/ES phases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acdctool.data.phases import assign_by_frame_order, assign_phases
from acdctool.data.synth import save_acdc_nifti
from acdctool.errors import BadInputError, InputMissingError
from acdctool.io.layouts import (
    Case,
    find_images,
    find_masks,
    is_nnunet_raw,
    pair_folders,
    parse_name,
    read_manifest,
    read_raw_dataset,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_acdc_nifti(np.zeros((4, 4, 2), np.uint8), (1.0, 1.0, 5.0), path)
    return path


@pytest.mark.parametrize(
    "name, key, suffix, channel",
    [
        ("case_017_0000.nii.gz", "case_017", None, 0),
        ("case_017.nii.gz", "case_017", None, None),
        ("patient001_frame01.nii.gz", "patient001_frame01", None, None),
        ("patient001_frame01_gt.nii.gz", "patient001_frame01", "gt", None),
        ("patient001_frame12_resunet.nii", "patient001_frame12", "resunet", None),
        ("patient001_frame01_0000.nii.gz", "patient001_frame01", None, 0),
        ("patient090_4d.nii.gz", "patient090_4d", None, None),
    ],
)
def test_parse_name(name, key, suffix, channel):
    assert tuple(parse_name(Path(name))) == (key, suffix, channel)


def test_acdc_folder_images_and_ground_truth(synth_root):
    images = find_images(synth_root / "training")
    assert len(images) == 10 and all(not p.name.endswith("_gt.nii.gz") for p in images.values())
    gts = find_masks(synth_root / "training", "gt")
    assert set(gts) == set(images) and all(v["gt"].name.endswith("_gt.nii.gz") for v in gts.values())


def test_prediction_suffixes_are_models_and_plain_names_in_another_folder_are_predictions(tmp_path):
    touch(tmp_path / "mixed" / "patient001_frame01.nii.gz")  # the image
    touch(tmp_path / "mixed" / "patient001_frame01_unet.nii.gz")
    touch(tmp_path / "mixed" / "patient001_frame01_pred.nii.gz")
    touch(tmp_path / "plain" / "patient001_frame01.nii.gz")
    assert find_masks(tmp_path / "mixed", "pred") == {
        "patient001_frame01": {
            "unet": tmp_path / "mixed" / "patient001_frame01_unet.nii.gz",
            "pred": tmp_path / "mixed" / "patient001_frame01_pred.nii.gz",
        }
    }
    assert find_masks(tmp_path / "plain", "pred", "nnunet") == {
        "patient001_frame01": {"nnunet": tmp_path / "plain" / "patient001_frame01.nii.gz"}
    }


def test_second_channel_and_duplicates_are_refused(tmp_path):
    touch(tmp_path / "a" / "case1_0001.nii.gz")
    with pytest.raises(BadInputError, match=r"case1_0001\.nii\.gz: channel 0001"):
        find_images(tmp_path / "a")
    touch(tmp_path / "b" / "case1.nii.gz")
    touch(tmp_path / "b" / "case1.nii")
    with pytest.raises(BadInputError, match="a second"):
        find_masks(tmp_path / "b", "pred")


def test_pairing_bad_inputs_name_the_file(tmp_path):
    touch(tmp_path / "img" / "c1_0000.nii.gz")
    touch(tmp_path / "img" / "c2_0000.nii.gz")
    touch(tmp_path / "pred" / "c1.nii.gz")
    with pytest.raises(BadInputError, match=r"c2_0000\.nii\.gz: image without a prediction"):
        pair_folders(tmp_path / "pred", tmp_path / "img", None)
    cases, notes = pair_folders(tmp_path / "pred", tmp_path / "img", None, allow_missing=True)
    assert [c.key for c in cases] == ["c1"] and "c2" in notes[0]
    touch(tmp_path / "pred" / "c3.nii.gz")
    with pytest.raises(BadInputError, match=r"c3\.nii\.gz: prediction without its image"):
        pair_folders(tmp_path / "pred", tmp_path / "img", None, allow_missing=True)
    (tmp_path / "pred" / "c3.nii.gz").unlink()
    touch(tmp_path / "gt" / "c2.nii.gz")
    with pytest.raises(BadInputError, match=r"c1\.nii\.gz: prediction without ground truth"):
        pair_folders(tmp_path / "pred", tmp_path / "img", tmp_path / "gt", allow_missing=True)
    with pytest.raises(InputMissingError):
        pair_folders(tmp_path / "nope", tmp_path / "img", None)


def test_info_cfg_gives_group_and_phase(synth_root, tmp_path):
    for p in ("patient001", "patient002"):
        for f in (synth_root / "training" / p).glob("*_frame??.nii.gz"):
            touch(tmp_path / "pred" / f.name.replace(".nii.gz", "_unet.nii.gz"))
    cases, _ = pair_folders(tmp_path / "pred", synth_root / "training", None, allow_missing=True)
    assert {c.phase_from for c in cases} == {"info"} and {c.group for c in cases} == {"NOR", "MINF"}
    assert [(c.frame, c.phase) for c in cases if c.patient == "patient001"][0] == (1, "ED")


def test_manifest(tmp_path):
    img, pred = touch(tmp_path / "data" / "scan_a.nii.gz"), touch(tmp_path / "data" / "seg_a.nii.gz")
    touch(tmp_path / "data" / "scan_b.nii.gz")
    touch(tmp_path / "data" / "seg_b.nii.gz")
    csv = tmp_path / "m.csv"
    csv.write_text(
        "image,prediction,patient,phase,group\n"
        f"data/scan_a.nii.gz,{pred},subj1,ed,DCM\n"
        "data/scan_b.nii.gz,data/seg_b.nii.gz,subj1,ES,DCM\n"
    )
    cases = read_manifest(csv)
    assert [(c.key, c.patient, c.phase, c.group) for c in cases] == [
        ("seg_a", "subj1", "ED", "DCM"),
        ("seg_b", "subj1", "ES", "DCM"),
    ]
    assert cases[0].image == img and cases[0].preds == {"pred": pred}
    csv.write_text("image,prediction,phase\ndata/scan_a.nii.gz,data/seg_a.nii.gz,diastole\n")
    with pytest.raises(BadInputError, match=r"m\.csv:2: phase 'diastole'"):
        read_manifest(csv)
    csv.write_text("image,prediction\n,data/seg_a.nii.gz\n")
    with pytest.raises(BadInputError, match=r"m\.csv:2: no image given"):
        read_manifest(csv)
    csv.write_text("image,gt\ndata/scan_a.nii.gz,data/seg_a.nii.gz\n")
    with pytest.raises(BadInputError, match="lacks column"):
        read_manifest(csv)
    csv.write_text("image,prediction\ndata/scan_a.nii.gz,data/missing.nii.gz\n")
    with pytest.raises(InputMissingError, match="missing.nii.gz"):
        read_manifest(csv)


def test_nnunet_raw_dataset(nnunet_raw, tmp_path):
    assert is_nnunet_raw(nnunet_raw) and is_nnunet_raw(nnunet_raw / "imagesTs")
    subsets, dataset, _ = read_raw_dataset(nnunet_raw)
    assert dataset == nnunet_raw / "dataset.json"
    (src_tr, tr), (src_ts, ts) = subsets
    assert (src_tr, len(tr), src_ts, len(ts)) == ("training", 10, "testing", 4)
    assert all(c.gt is not None for c in tr) and all(c.gt is None for c in ts)
    assert tr[0].patient == "patient001" and tr[0].frame == 1
    broken = tmp_path / "raw"
    (broken / "imagesTr").mkdir(parents=True)
    touch(broken / "imagesTr" / "x_0000.nii.gz")
    touch(broken / "labelsTr" / "y.nii.gz")
    with pytest.raises(BadInputError, match=r"y\.nii\.gz: label without its image"):
        read_raw_dataset(broken)


def _cases(*frames):
    return [Case(f"patient001_frame{f:02d}", None, patient="patient001", frame=f) for f in frames]


def test_phases_by_lv_volume_and_from_what_is_known():
    cases = _cases(1, 9)
    assign_phases(cases, {"patient001_frame01": 90.0, "patient001_frame09": 140.0})
    assert [(c.phase, c.phase_from) for c in cases] == [("ES", "lv-volume"), ("ED", "lv-volume")]
    one = _cases(4)
    assign_phases(one, {"patient001_frame04": 10.0})
    assert one[0].phase == "ED"
    known = _cases(1, 9)
    known[1].phase, known[1].phase_from = "ES", "manifest"
    assign_phases(known, {})
    assert [c.phase for c in known] == ["ED", "ES"]
    three = _cases(1, 5, 9)
    lv = {"patient001_frame01": 100.0, "patient001_frame05": 60.0, "patient001_frame09": 80.0}
    with pytest.raises(BadInputError, match="has 3 frames"):
        assign_phases(three, lv)
    assign_phases(three, lv, extra_frames=True)
    assert [c.phase for c in three] == ["ED", "ES", ""]
    twice = _cases(1, 9)
    for c in twice:
        c.phase = "ED"
    with pytest.raises(BadInputError, match="several ED"):
        assign_phases(twice, {})
    order = _cases(12, 1)
    assign_by_frame_order(order)
    assert [(c.frame, c.phase) for c in order] == [(12, "ES"), (1, "ED")]
