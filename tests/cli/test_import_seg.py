"""`acdctool import-seg`: every layout in, the round trip at native resolution, and every bad input."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.slices import SliceFile

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def direct_ml(path, label: int) -> float:
    """Volume (mL) of a label straight from a NIfTI file, voxel size from pixdim."""
    img = nib.load(path)
    return float((np.asanyarray(img.dataobj) == label).sum() * np.prod(img.header.get_zooms()[:3]) / 1000)


def info_phases(acdc_training):
    out = {}
    for cfg in sorted(acdc_training.glob("patient*/Info.cfg")):
        fields = dict(line.split(": ") for line in cfg.read_text().splitlines())
        out[cfg.parent.name] = {int(fields["ED"]): "ED", int(fields["ES"]): "ES"}
    return out


def test_round_trip_nnunet_layout_dice_1_hd_0_volumes_exact(nnunet_raw, synth_root, tmp_path):
    """Ground truth written out as nnU-Net predictions, imported, evaluated at native resolution."""
    seg = tmp_path / "seg.h5"
    tr = nnunet_raw / "labelsTr"
    res = invoke("import-seg", tr, "--images", nnunet_raw / "imagesTr", "--gt", tr, "-o", seg, "--size", 64, "-q")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(seg)
    with SliceFile(seg) as f:
        assert f.kind == "seg" and np.array_equal(f.read("pred"), f.read("gt"))
        index = f.index
    phases = info_phases(synth_root / "training")  # not in the nnU-Net layout: the LV rule must find them
    for (patient, frame), phase in index.groupby(["patient", "frame"]).phase.first().items():
        assert phases[patient][frame] == phase
    out = tmp_path / "native"
    res = invoke("eval", seg, "--native", "-o", out, "-q", "--workers", 1)
    assert res.exit_code == 0, res.output
    volumes = pd.read_csv(out / "volumes.csv")
    assert len(volumes) == 10
    for c in ("rv", "myo", "lv"):
        assert (volumes[f"dice_{c}"] == 1.0).all() and (volumes[f"hd_{c}"] == 0.0).all()
    clinical = pd.read_csv(out / "clinical.csv").set_index("patient")
    for patient, row in clinical.iterrows():
        ed = tr / f"{patient}_frame{int(row.ed_frame):02d}.nii.gz"
        es = tr / f"{patient}_frame{int(row.es_frame):02d}.nii.gz"
        assert row.lv_edv_pred == pytest.approx(direct_ml(ed, 3), rel=1e-5)
        assert row.rv_esv_pred == pytest.approx(direct_ml(es, 1), rel=1e-5)
        assert row.myo_mass_pred == pytest.approx(1.05 * direct_ml(ed, 2), rel=1e-5)
    # the same files evaluated as folders, against the ACDC folder (Info.cfg phases)
    res = invoke("eval", tr, "--gt", synth_root / "training", "-o", tmp_path / "folders", "-q", "--workers", 1)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "folders" / "summary.json").read_text())
    assert summary["volumes"]["dice"]["mean"] == 1.0 and summary["volumes"]["hd_mm"]["lv"] == 0.0


@pytest.mark.real
def test_round_trip_acdc_dir(write_nnunet, acdc_dir, tmp_path):
    patients = ["patient001", "patient021", "patient041", "patient061", "patient081", "patient090"]
    raw = write_nnunet(acdc_dir, tmp_path / "raw", patients=patients)
    seg = tmp_path / "seg.h5"
    tr = raw / "labelsTr"
    res = invoke("import-seg", tr, "--images", raw / "imagesTr", "--gt", tr, "-o", seg, "-q")
    assert res.exit_code == 0, res.output
    res = invoke("eval", seg, "--native", "-o", tmp_path / "rep", "-q", "--no-plots")
    assert res.exit_code == 0, res.output
    volumes = pd.read_csv(tmp_path / "rep" / "volumes.csv")
    assert len(volumes) == 12
    for c in ("rv", "myo", "lv"):
        assert (volumes[f"dice_{c}"] == 1.0).all() and (volumes[f"hd_{c}"] == 0.0).all()
    phases = info_phases(acdc_dir)
    clinical = pd.read_csv(tmp_path / "rep" / "clinical.csv").set_index("patient")
    for patient, row in clinical.iterrows():
        assert phases[patient] == {int(row.ed_frame): "ED", int(row.es_frame): "ES"}
        ed = tr / f"{patient}_frame{int(row.ed_frame):02d}.nii.gz"
        assert row.lv_edv_pred == pytest.approx(direct_ml(ed, 3), rel=1e-5)
    assert clinical.loc["patient001", "lv_edv_gt"] == pytest.approx(295.5, abs=0.1)  # README: 295.5 mL from NIfTI


def test_acdc_naming_several_models_info_cfg_and_allow_missing(synth_root, tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    for patient in ("patient001", "patient002"):
        for gt in (synth_root / "training" / patient).glob("*_gt.nii.gz"):
            for model in ("unet", "resunet"):
                shutil.copy(gt, preds / gt.name.replace("_gt", f"_{model}"))
    seg = tmp_path / "seg.h5"
    res = invoke("import-seg", preds, "--images", synth_root / "training", "-o", seg, "--size", 64, "-q")
    assert res.exit_code == 65 and "image without a prediction" in res.output and not seg.exists()
    res = invoke("import-seg", preds, "--images", synth_root / "training", "-o", seg, "--size", 64, "--allow-missing")
    assert res.exit_code == 0, res.output
    with SliceFile(seg) as f:
        index = f.index
        assert not f.has("gt")
    assert sorted(index.model.unique()) == ["resunet", "unet"]
    assert set(index.group) == {"NOR", "MINF"}  # from Info.cfg
    assert index.groupby(["patient", "phase"]).frame.first().loc[("patient001", "ED")] == 1


def test_same_name_in_another_folder_and_a_label_coding(write_nnunet, synth_root, tmp_path):
    raw = write_nnunet(
        synth_root, tmp_path / "raw", patients=["patient003"], coding={"background": 0, "LV": 1, "MYO": 2, "RV": 3}
    )
    preds = tmp_path / "flat"
    preds.mkdir()
    for f in (raw / "labelsTr").iterdir():
        shutil.copy(f, preds / f.name)  # patientNNN_frameYY.nii.gz, the image's own name
    seg = tmp_path / "seg.h5"
    res = invoke(
        "import-seg",
        preds,
        "--images",
        synth_root / "training",
        "-o",
        seg,
        "--size",
        64,
        "--allow-missing",
        "--labels",
        raw / "dataset.json",
        "--model-name",
        "nnunet",
    )
    assert res.exit_code == 0, res.output
    ref = tmp_path / "ref.h5"
    gt_dir = synth_root / "training"
    assert invoke("import-seg", gt_dir, "--images", gt_dir, "-o", ref, "--size", 64, "-q").exit_code == 0
    with SliceFile(seg) as f, SliceFile(ref) as g:
        assert set(f.index.model) == {"nnunet"}
        rows = (g.index.patient == "patient003").to_numpy()
        assert np.array_equal(f.read("pred"), g.read("pred")[rows])  # re-coded labels mapped back


def test_manifest_layout(synth_root, tmp_path):
    rows = ["image,prediction,gt,patient,phase"]
    for frame, phase in ((1, "ED"), (None, "ES")):
        folder = synth_root / "training" / "patient004"
        files = sorted(folder.glob("*_frame??.nii.gz"))
        image = files[0] if frame == 1 else files[1]
        gt = image.with_name(image.name.replace(".nii.gz", "_gt.nii.gz"))
        rows.append(f"{image},{gt},{gt},subjectA,{phase}")
    csv = tmp_path / "m.csv"
    csv.write_text("\n".join(rows) + "\n")
    seg = tmp_path / "seg.h5"
    res = invoke("import-seg", "--manifest", csv, "-o", seg, "--size", 64, "-q")
    assert res.exit_code == 0, res.output
    with SliceFile(seg) as f:
        assert set(f.index.patient) == {"subjectA"} and set(f.index.phase) == {"ED", "ES"}
        assert np.array_equal(f.read("pred"), f.read("gt"))
    res = invoke("import-seg", tmp_path, "--manifest", csv, "-o", tmp_path / "x.h5")
    assert res.exit_code == 2


def test_refine_then_export_keeps_unchanged_slices_bit_identical(nnunet_raw, tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    for f in sorted((nnunet_raw / "labelsTr").glob("patient00[12]*.nii.gz")):
        img = nib.load(f)
        data = np.asanyarray(img.dataobj).copy()
        rows = np.flatnonzero(data[:, :, 1].any(axis=1))
        cols = np.flatnonzero(data[:, :, 1].any(axis=0))
        r, c = rows[-1] + 5, (cols[0] + cols[-1]) // 2
        data[r : r + 5, c : c + 5, 1] = 3  # a stray LV blob below the heart in slice 1: anatomically invalid
        nib.Nifti1Image(data, img.affine, img.header).to_filename(preds / f.name)
    seg, refined = tmp_path / "seg.h5", tmp_path / "morph.h5"
    args = ("--images", nnunet_raw / "imagesTr", "--allow-missing", "--size", 64, "-q")
    assert invoke("import-seg", preds, *args, "-o", seg).exit_code == 0
    res = invoke("refine", seg, "--method", "morph", "-o", refined, "-q")
    assert res.exit_code == 0, res.output
    out = tmp_path / "nifti"
    res = invoke("export", refined, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    with SliceFile(refined) as f:
        changed = f.index.groupby(["case", "slice"]).refine_changed.first()
    assert changed.sum() > 0 and (changed == 0).sum() > 0
    for path in sorted(out.glob("*.nii.gz")):
        case = path.name[: -len("_pred.nii.gz")]
        mine, src = nib.load(path), nib.load(preds / f"{case}.nii.gz")
        assert mine.header.get_zooms() == src.header.get_zooms() and np.array_equal(mine.affine, src.affine)
        a, b = np.asanyarray(mine.dataobj), np.asanyarray(src.dataobj)
        for z in range(a.shape[2]):
            same = np.array_equal(a[:, :, z], b[:, :, z])
            assert same == (changed.loc[(case, z)] == 0), (case, z)
        assert changed.loc[(case, 1)] == 1  # the blob's slice was corrected


@pytest.fixture()
def bad_setup(nnunet_raw, tmp_path):
    """A private copy of one patient's images and labels (as predictions), free to corrupt."""
    images, preds = tmp_path / "img", tmp_path / "pred"
    images.mkdir()
    preds.mkdir()
    for f in (nnunet_raw / "imagesTr").glob("patient001_*"):
        shutil.copy(f, images / f.name)
    for f in (nnunet_raw / "labelsTr").glob("patient001_*"):
        shutil.copy(f, preds / f.name)
    return images, preds


def _rewrite(path, fn=None, affine=None, array=None):
    img = nib.load(path)
    data = np.asanyarray(img.dataobj) if array is None else array
    data = fn(data) if fn else data
    nib.Nifti1Image(data, img.affine if affine is None else affine, img.header).to_filename(path)


def _shifted(path):
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 4.0
    return affine


CASES = {
    "shape": lambda p: _rewrite(p, lambda d: d[:-2]),
    "affine": lambda p: _rewrite(p, affine=_shifted(p)),
    "labels": lambda p: _rewrite(p, lambda d: np.where(d == 3, 5, d).astype(np.uint8)),
    "2d": lambda p: nib.Nifti1Image(np.zeros((10, 12), np.uint8), np.eye(4)).to_filename(p),
    "4d": lambda p: _rewrite(p, lambda d: np.stack([d, d], axis=-1)),
}
MESSAGES = {
    "shape": "prediction shape",
    "affine": "prediction affine differs",
    "labels": "labels 5 outside the label map",
    "2d": "expected a 3D volume",
    "4d": "expected a 3D volume",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_prediction_is_one_line_naming_it_and_nothing_is_written(bad_setup, tmp_path, case):
    images, preds = bad_setup
    target = preds / "patient001_frame01.nii.gz"
    CASES[case](target)
    out = tmp_path / "seg.h5"
    res = invoke("import-seg", preds, "--images", images, "-o", out, "--size", 64, "-q")
    assert res.exit_code == 65, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0] and MESSAGES[case] in lines[0], res.output
    assert not out.exists() and not list(tmp_path.glob(".seg.h5*"))


def test_unpaired_files_and_unmapped_dataset_json(bad_setup, tmp_path):
    images, preds = bad_setup
    out = tmp_path / "seg.h5"
    orphan = preds / "patient009_frame01.nii.gz"
    shutil.copy(preds / "patient001_frame01.nii.gz", orphan)
    res = invoke("import-seg", preds, "--images", images, "-o", out, "-q")
    assert res.exit_code == 65 and f"{orphan}: prediction without its image" in res.output and not out.exists()
    orphan.unlink()
    lonely = preds / "patient001_frame01.nii.gz"
    lonely.unlink()
    res = invoke("import-seg", preds, "--images", images, "-o", out, "-q")
    image = images / "patient001_frame01_0000.nii.gz"
    assert res.exit_code == 65 and f"{image}: image without a prediction" in res.output and not out.exists()
    (preds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "scar": 1, "MYO": 2, "LV": 3}}))
    res = invoke("import-seg", preds, "--images", images, "-o", out, "--allow-missing", "-q")
    assert res.exit_code == 65 and "dataset.json: labels 'scar' do not map to RV/MYO/LV" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()
