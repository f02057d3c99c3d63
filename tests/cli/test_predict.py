"""`acdctool predict` on synthetic phantoms, `export-model` (lean, TorchScript) and `info` on model files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.checkpoint import load_checkpoint, save_checkpoint

runner = CliRunner()
TINY = ["--net-arg", "channels=4,8,16", "--batch-size", "8", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny nets on one thread (fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def heart_prep(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "heart.h5"
    args = ("--size", 64, "--roi", "heart", "--folds", 2, "--val-fraction", 0, "-q")
    assert invoke("prep", synth_root / "training", "-o", out, *args).exit_code == 0
    return out


@pytest.fixture(scope="module")
def models(heart_prep):
    out = []
    for fold in (0, 1):
        run = heart_prep.parent / f"unet-f{fold}"
        res = invoke("train-seg", heart_prep, "-o", run, "--fold", fold, "--epochs", 2, *TINY)
        assert res.exit_code == 0, res.output
        out.append(run / "best.pt")
    return out


def _masks(folder):
    return {p.name: np.asanyarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def test_predict_3d_nnunet_images(nnunet_raw, models, tmp_path):
    out = tmp_path / "masks"
    res = invoke("predict", nnunet_raw / "imagesTs", "-m", models[0], "-m", models[1], "-o", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    images = sorted((nnunet_raw / "imagesTs").glob("*_0000.nii.gz"))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name.replace("_0000", "") for p in images)
    volumes = pd.read_csv(out / "volumes.csv").set_index("case")
    for image in images:
        key = image.name.replace("_0000.nii.gz", "")
        mask, src = nib.load(out / f"{key}.nii.gz"), nib.load(image)
        assert mask.shape == src.shape and np.array_equal(mask.affine, src.affine)
        assert mask.header.get_zooms() == src.header.get_zooms()  # pixdim kept (the affine is unit-scale)
        data = np.asanyarray(mask.dataobj)
        assert data.dtype == np.uint8 and data.max() <= 3
        voxel_ml = float(np.prod(src.header.get_zooms())) / 1000
        assert volumes.loc[key, "lv_ml"] == pytest.approx((data == 3).sum() * voxel_ml, rel=1e-5)
        assert volumes.loc[key, "slices"] == src.shape[2]
    clinical = pd.read_csv(out / "clinical.csv").set_index("patient")
    assert sorted(clinical.index) == ["patient006", "patient007"]
    for patient, row in clinical.iterrows():
        part = volumes[volumes.patient == patient]
        assert row.lv_edv == pytest.approx(part.lv_ml.max(), rel=1e-5)  # no Info.cfg: the larger LV is ED
        assert row.lv_ef == pytest.approx(100 * (row.lv_edv - row.lv_esv) / row.lv_edv, rel=1e-5)
        assert row.myo_mass == pytest.approx(1.05 * part.set_index("phase").loc["ED", "myo_ml"], rel=1e-5)
        assert 0 <= row.valid_fraction <= 1
    meta = json.loads((out / "predict.json").read_text())
    assert [m["fold"] for m in meta["models"]] == [0, 1] and meta["crop_rule"]["roi"] == "heart"
    assert meta["config"]["tta"] is True
    assert set(volumes.passes) <= {1, 2, 3}


def test_predict_4d_cine_frames(models, tmp_path):
    from acdctool.config import SynthConfig
    from acdctool.stages import synth

    root = tmp_path / "cine"
    synth.run(SynthConfig(patients=1, frames=6, write_4d=True, seed=3), None, root)
    patient = root / "training" / "patient001"
    cine = patient / "patient001_4d.nii.gz"
    out = tmp_path / "p"
    res = invoke("predict", cine, "-m", models[0], "--frames", "1,3", "-o", out, "--no-tta", "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["patient001_frame01.nii.gz", "patient001_frame03.nii.gz"]
    mask = nib.load(out / "patient001_frame01.nii.gz")
    assert mask.shape == nib.load(cine).shape[:3] and mask.header.get_zooms() == nib.load(cine).header.get_zooms()[:3]
    volumes = pd.read_csv(out / "volumes.csv")
    assert set(volumes.phase_from) == {"info"}  # Info.cfg beside the cine gives ED (frame 1)
    res = invoke("predict", cine, "-m", models[0], "-o", tmp_path / "all", "--device", "cpu", "-q")
    assert res.exit_code == 0 and len(list((tmp_path / "all").glob("*.nii.gz"))) == 6
    res = invoke("predict", cine, "-m", models[0], "--frames", "7", "-o", tmp_path / "x", "-q")
    assert res.exit_code == 65 and "has 6 frames" in res.output and not (tmp_path / "x").exists()
    res = invoke("predict", patient, "-m", models[0], "-o", tmp_path / "folder", "--device", "cpu")
    assert res.exit_code == 0 and "left out" in res.output  # the patient's 3D frames win over its cine
    assert len(list((tmp_path / "folder").glob("*.nii.gz"))) == 2


def test_lean_models_predict_and_gen_seg_like_the_originals(nnunet_raw, heart_prep, models, tmp_path):
    lean = []
    for i, ck in enumerate(models):
        path = tmp_path / f"lean{i}.pt"
        res = invoke("export-model", ck, "-o", path, "-q")
        assert res.exit_code == 0, res.output
        lean.append(path)
        small = load_checkpoint(path)
        assert small.train is None and small.data["prep"] == load_checkpoint(ck).data["prep"]
        assert path.stat().st_size < ck.stat().st_size
        raw = torch.load(path, weights_only=True)
        assert raw["train"] is None and set(raw["state_dict"]) == set(load_checkpoint(ck).state_dict)
    images = nnunet_raw / "imagesTs"
    full, thin = tmp_path / "full", tmp_path / "thin"
    assert invoke("predict", images, "-m", models[0], "-m", models[1], "-o", full, "-q").exit_code == 0
    assert invoke("predict", images, "-m", lean[0], "-m", lean[1], "-o", thin, "-q").exit_code == 0
    a, b = _masks(full), _masks(thin)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    coded = tmp_path / "coded"
    assert (
        invoke("predict", images, "-m", lean[0], "-m", lean[1], "-o", coded, "--labels", "LV=1,MYO=2,RV=3").exit_code
        == 0
    )
    lut = np.array([0, 3, 2, 1], np.uint8)
    assert all(np.array_equal(v, lut[a[k]]) for k, v in _masks(coded).items())
    s1, s2 = tmp_path / "s1.h5", tmp_path / "s2.h5"
    assert invoke("gen-seg", heart_prep, "-m", models[0], "-m", models[1], "-o", s1, "-q").exit_code == 0
    assert invoke("gen-seg", heart_prep, "-m", lean[0], "-m", lean[1], "-o", s2, "-q").exit_code == 0
    from acdctool.io.slices import SliceFile

    with SliceFile(s1) as f, SliceFile(s2) as g:
        assert np.array_equal(f.read("pred"), g.read("pred"))


def _tamper(src, dst, **changes):
    ck = load_checkpoint(src)
    fields = dict(
        kind=ck.kind,
        model_name=ck.model_name,
        model_args=ck.model_args,
        state_dict=ck.state_dict,
        config=ck.config,
        data=ck.data,
        metrics=ck.metrics,
        train=ck.train,
    )
    fields.update(changes)
    save_checkpoint(dst, **fields)
    return dst


def test_predict_refuses_what_it_cannot_reproduce(nnunet_raw, prepped, heart_prep, models, tmp_path):
    images = nnunet_raw / "imagesTs"
    gt_run = tmp_path / "gt-run"
    assert invoke("train-seg", prepped, "-o", gt_run, "--fold", 0, "--epochs", 1, *TINY).exit_code == 0
    ck = load_checkpoint(models[0])
    old = _tamper(models[0], tmp_path / "old.pt", data={k: v for k, v in ck.data.items() if k != "prep"})
    other = _tamper(models[1], tmp_path / "other.pt", model_name="resunet")
    ts = tmp_path / "ts.pt"
    assert invoke("export-model", models[0], "--torchscript", "-o", ts, "-q").exit_code == 0
    out = tmp_path / "out"
    for bad, message in (
        ([gt_run / "best.pt"], "prep --roi heart"),
        ([old], "export-model"),
        ([models[0], other], "one architecture"),
        ([ts], "TorchScript export"),
    ):
        res = invoke("predict", images, *[a for m in bad for a in ("-m", m)], "-o", out, "-q")
        assert res.exit_code == 65 and message in res.output, (bad, res.output)
        assert len(res.output.strip().splitlines()) == 1 and not out.exists()
    res = invoke("predict", images, "-m", models[0], "-o", images.parent, "-f", "-q")
    assert res.exit_code == 73 and images.is_dir() and any(images.iterdir())
    fixed = tmp_path / "fixed.pt"
    res = invoke("export-model", old, "--slices", prepped, "-o", fixed, "-q")
    assert res.exit_code == 65 and "not the file" in res.output
    assert invoke("export-model", old, "--slices", heart_prep, "-o", fixed, "-q").exit_code == 0
    assert load_checkpoint(fixed).data["prep"]["roi"] == "heart"
    assert invoke("predict", images, "-m", fixed, "-o", out, "-q").exit_code == 0


def test_predict_with_nvae_correction(nnunet_raw, models, tmp_path):
    from acdctool.models.nvae import NVAE

    nvae = NVAE(in_channels=4, image_size=64, stem_channels=4, scales=2, groups_per_scale=(1, 1), latent_channels=4)
    prep = {"roi": "gt", "roi_mm": 200.0, "margin": 0.25, "size": 64, "mask_interp": "smooth"}
    ckpt = tmp_path / "nvae.pt"
    save_checkpoint(
        ckpt,
        kind="nvae-model",
        model_name="nvae",
        model_args=nvae.args,
        state_dict=nvae.state_dict(),
        config={},
        data={"input": "gt", "prep": {**prep, "low_percentile": 1.0, "high_percentile": 99.0}},
    )
    out = tmp_path / "corrected"
    res = invoke("predict", nnunet_raw / "imagesTs", "-m", models[0], "--nvae", ckpt, "-o", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "roi gt" in res.output  # the NVAE saw masks at another scale: said, not hidden
    assert sorted(p.name for p in (out / "uncorrected").glob("*.nii.gz")) == sorted(
        p.name for p in out.glob("*.nii.gz")
    )
    volumes = pd.read_csv(out / "volumes.csv")
    assert (volumes.corrected_slices <= volumes.invalid_slices_crop).all()
    meta = json.loads((out / "predict.json").read_text())
    assert meta["nvae"][0]["path"] == str(ckpt.resolve())
    for name, mask in _masks(out).items():
        raw = np.asanyarray(nib.load(out / "uncorrected" / name).dataobj)
        row = volumes.set_index("mask").loc[name]
        if row.corrected_slices == 0:
            assert np.array_equal(mask, raw)  # the gate keeps what it does not correct
    # ranking by the ensemble's softmax: same nets, same uncorrected masks, the rule recorded
    soft = tmp_path / "soft"
    args = ["--nvae", ckpt, "-o", soft, "--device", "cpu", "--choose", "soft-dice"]
    res = invoke("predict", nnunet_raw / "imagesTs", "-m", models[0], *args)
    assert res.exit_code == 0, res.output
    assert json.loads((soft / "predict.json").read_text())["config"]["choose"] == "soft-dice"
    soft_volumes = pd.read_csv(soft / "volumes.csv")
    assert soft_volumes.invalid_slices_crop.tolist() == volumes.invalid_slices_crop.tolist()
    assert (soft_volumes.corrected_slices <= soft_volumes.invalid_slices_crop).all()
    for name in volumes["mask"]:
        raw = np.asanyarray(nib.load(out / "uncorrected" / name).dataobj)
        assert np.array_equal(raw, np.asanyarray(nib.load(soft / "uncorrected" / name).dataobj))


def test_heart_search_recentres_on_an_off_centre_heart(tmp_path):
    """Two-pass crop: a 'net' that labels bright pixels LV finds a disk the centre crop only grazes."""
    from acdctool.config import PredictConfig
    from acdctool.data.crop_rule import CropRule, centre_box, heart_centred_box
    from acdctool.models.inference import segment_patient

    rule = CropRule("heart", 100.0, 0.25, 32, "smooth", 1.0, 99.0)

    class Bright:
        def __init__(self):
            self.rule = rule

        def probs(self, images, batch_size, tta, amp):
            lv = (images > 0.5).astype(np.float32)[:, None]
            return np.concatenate([1 - lv, 0 * lv, 0 * lv, lv], axis=1)

    spacing = (1.0, 1.0, 10.0)
    image = np.zeros((200, 200, 3), np.float32)
    yy, xx = np.mgrid[:200, :200]
    disk = np.hypot(yy - 100, xx - 140) < 20  # the centre crop (columns 50..149) cuts the disk in half
    image[disk] = 1.0
    assert centre_box((200, 200), spacing, 100.0).c0 + 100 < 160
    seg = segment_patient([(image, spacing, tmp_path / "x.nii.gz")], Bright(), PredictConfig(passes=3))
    assert seg.box == heart_centred_box(disk, spacing[:2], 100.0) and seg.passes >= 2 and seg.heart_found
    one = segment_patient([(image, spacing, tmp_path / "x.nii.gz")], Bright(), PredictConfig(passes=1))
    assert one.box == centre_box((200, 200), spacing, 100.0) and one.passes == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load: TorchScript is what was asked for
def test_torchscript_export_and_info_on_model_files(models, heart_prep, tmp_path):
    ts = tmp_path / "unet.ts"
    res = invoke("export-model", models[0], "--torchscript", "-o", ts)
    assert res.exit_code == 0, res.output
    extra = {"acdctool.json": ""}
    module = torch.jit.load(str(ts), _extra_files=extra)
    meta = json.loads(extra["acdctool.json"])
    assert meta["format"] == "acdctool-torchscript" and meta["data"]["prep"]["roi"] == "heart"
    from acdctool.models.seg import build_seg_model

    ck = load_checkpoint(models[0])
    net = build_seg_model(ck.model_name, ck.model_args)
    net.load_state_dict(ck.state_dict)
    x = torch.rand(3, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(module(x), net.eval()(x), atol=1e-4)
    assert invoke("export-model", models[0], "--torchscript", "-o", ts, "-q").exit_code == 73  # exists
    res = invoke("info", models[0], "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["format"] == "checkpoint" and info["kind"] == "seg-model" and not info["lean"]
    assert info["data"]["fold"] == 0 and info["crop_rule"].startswith("heart") and info["model"] == "unet"
    assert info["versions"]["torch"] and "val_dice_mean" in info["metrics"]
    ts_info = json.loads(invoke("info", ts, "--json").stdout)
    assert ts_info["format"] == "torchscript" and ts_info["data"]["fold"] == 0
    res = invoke("info", models[0])
    assert res.exit_code == 0 and "crop rule" in res.stdout and "heart" in res.stdout
    nv = tmp_path / "nvae.pt"
    from acdctool.models.nvae import NVAE

    model = NVAE(in_channels=4, image_size=64, stem_channels=4, scales=2, groups_per_scale=(1, 1), latent_channels=4)
    save_checkpoint(
        nv,
        kind="nvae-model",
        model_name="nvae",
        model_args=model.args,
        state_dict=model.state_dict(),
        config={},
        data={},
    )
    res = invoke("export-model", nv, "--torchscript", "-o", tmp_path / "nv.ts", "-q")
    assert res.exit_code == 65 and "segmentation nets only" in res.output
    res = invoke("export-model", nv, "-o", tmp_path / "nv-lean.pt", "-q")
    assert res.exit_code == 0 and load_checkpoint(tmp_path / "nv-lean.pt").kind == "nvae-model"
    res = invoke("export-model", models[0], "-o", models[0], "-f", "-q")
    assert res.exit_code == 73  # never replace the input
