"""The qc and qc-calibrate stages on synthetic files: outputs, calibration round trip, corrupted vs clean."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from acdctool.config import QcCalibrateConfig, QcConfig
from acdctool.errors import BadInputError, ConfigError, FileKindError, SchemaVersionError
from acdctool.qc.calibration import Calibration
from acdctool.stages import qc, qc_calibrate


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def calibration(qc_seg, fold_nvaes, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "qc_calibration.json"
    oof = out.with_name("oof.csv")
    res = qc_calibrate.run(
        QcCalibrateConfig(device="cpu", workers=1), qc_calibrate.Inputs((qc_seg,), tuple(fold_nvaes)), out, oof_csv=oof
    )
    return out, oof, res


def test_qc_without_ground_truth_or_calibration(prepped, tmp_path, write_qc_seg):
    seg = write_qc_seg(prepped, tmp_path / "seg.h5", gt=False, probs=False)
    res = qc.run(QcConfig(plots=True, workers=1), qc.Inputs(seg), tmp_path / "qc")
    d = tmp_path / "qc"
    assert sorted(p.name for p in d.iterdir()) == [
        "flags.csv",
        "patients.csv",
        "qc_dice.png",
        "review.csv",
        "slices.csv",
        "summary.json",
    ]
    slices = pd.read_csv(d / "slices.csv")
    assert "pred_dice" not in slices and "gt_dice" not in slices and "entropy_fg" not in slices
    assert not res.calibrated and any("needs a calibration" in n for n in res.notes)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["score"] == "risk" and summary["signals"] == ["mask"] and "scores_vs_gt" not in summary
    assert summary["config"]["_config"] == "QcConfig" and summary["provenance"]["inputs"]
    # flags follow the documented rule: risk >= 1 - flag_below
    assert (slices["flag"] == (slices["risk"] >= 1 - 0.8)).all()
    review = pd.read_csv(d / "review.csv")
    assert review["risk"].is_monotonic_decreasing and review["rank"].tolist() == list(range(1, len(review) + 1))
    assert len(slices) == res.slices and res.patients == slices["patient"].nunique()


def test_calibration_file_is_complete_and_out_of_fold(calibration, qc_seg):
    path, oof_csv, res = calibration
    d = json.loads(path.read_text())
    assert (d["format"], d["kind"], d["schema_version"]) == ("acdctool-qc-calibration", "qc-calibration", 1)
    assert d["requires"] == ["mask", "nvae", "probs"] and d["features"] == res.features
    assert d["training_patients"] == sorted(pd.read_csv(oof_csv)["patient"].unique())
    assert d["config"]["_config"] == "QcCalibrateConfig" and d["training"]["files"][0]["sha256"]
    s = d["oof"]["slice"]
    assert s["n"] == res.rows and 0 <= s["predicted"]["mae"] <= 1
    assert set(s["signals"]) >= {"entropy_fg", "nvae_dice_mean", "n_failed", "risk"}
    # the stored out-of-fold scores are those of the stored out-of-fold predictions
    from acdctool.qc.scoring import auc, mae

    oof = pd.read_csv(oof_csv)
    assert mae(oof["pred_dice"], oof["gt_dice"]) == pytest.approx(s["predicted"]["mae"], abs=1e-5)
    assert auc(-oof["pred_dice"].to_numpy(), oof["gt_dice"].to_numpy() < 0.8) == pytest.approx(
        s["predicted"]["auc"], abs=1e-4
    )
    # the blend with the boosted trees is kept only when it predicted better out of fold
    m = d["oof"]["slice_models"]
    assert m["chosen"] == ("blend" if m["blend"]["mae"] < m["median"]["mae"] else "median")
    assert m[m["chosen"]]["mae"] == pytest.approx(s["predicted"]["mae"]) and ("slice_boost" in d) == (
        m["chosen"] == "blend"
    )
    # the synthetic corruptions are easy to see: the combination must beat chance by far
    assert s["predicted"]["auc"] > 0.8


def test_calibration_round_trips_and_refuses_other_files(calibration, qc_seg, fold_nvaes, tmp_path):
    path, _, _ = calibration
    cal = Calibration.load(path)
    again = tmp_path / "again.json"
    cal.save(again)
    table = pd.read_csv(path.with_name("oof.csv"))  # any table with the columns would do; use the qc run's
    res = qc.run(QcConfig(plots=False, workers=1), qc.Inputs(qc_seg, tuple(fold_nvaes), path), tmp_path / "a")
    res2 = qc.run(QcConfig(plots=False, workers=1), qc.Inputs(qc_seg, tuple(fold_nvaes), again), tmp_path / "b")
    a = pd.read_csv(tmp_path / "a" / "slices.csv")["pred_dice"]
    b = pd.read_csv(tmp_path / "b" / "slices.csv")["pred_dice"]
    pd.testing.assert_series_equal(a, b)
    assert res.calibrated and res2.calibrated and len(table)
    pa = pd.read_csv(tmp_path / "a" / "patients.csv")
    # patients are flagged by their predicted volume Dice by default, by the slices' mean on request
    assert res.summary["patient_score"] == "pred_vdice" and pa["pred_dice"].between(0, 1).all()
    assert (pa["flag"] == (pa["pred_vdice"] < 0.85)).all()
    thr = float(np.median(pa["pred_vdice"]))  # a threshold that splits the patients by volume Dice
    for mode, column in (("volume", "pred_vdice"), ("slices", "pred_dice")):
        cfg = QcConfig(plots=False, workers=1, flag_patient_below=thr, patient_dice=mode)
        r = qc.run(cfg, qc.Inputs(qc_seg, tuple(fold_nvaes), path), tmp_path / mode)
        p = pd.read_csv(tmp_path / mode / "patients.csv")
        assert r.summary["patient_score"] == column and (p["flag"] == (p[column] < thr)).all()
        flags = pd.read_csv(tmp_path / mode / "flags.csv")
        flagged = flags[flags["level"] == "patient"]
        assert len(flagged) == p["flag"].sum() and flagged[column].is_monotonic_increasing
        review = pd.read_csv(tmp_path / mode / "review.csv")  # each slice shows the score its patient is flagged by
        assert (
            f"patient_{column}" in review
            and f"patient_{'pred_dice' if column == 'pred_vdice' else 'pred_vdice'}" not in review
        )
        joined = review.merge(
            p[["patient", "model", column]].rename(columns={column: "expected"}), on=["patient", "model"]
        )
        assert len(joined) == len(review)
        np.testing.assert_allclose(joined[f"patient_{column}"], joined["expected"], rtol=1e-5)
    assert any("in-sample" in n for n in res.notes)  # these patients trained the calibration
    d = json.loads(path.read_text())
    # the volume-Dice line: stored, scored out of fold, applied by qc to the patients
    vm = d["volume_model"]
    assert vm["feature"] == "prob_vdice" and d["oof"]["patient_volume"]["feature"] == "prob_vdice"
    assert 0 <= d["oof"]["patient_volume"]["predicted"]["mae"] <= 1
    line = np.clip(vm["intercept"] + vm["slope"] * pa["prob_vdice"], 0, 1)
    np.testing.assert_allclose(pa["pred_vdice"], line, atol=1e-5)
    older = tmp_path / "older.json"  # a calibration written before the volume model: still read, no pred_vdice
    older.write_text(json.dumps({k: v for k, v in d.items() if k != "volume_model"}))
    assert Calibration.load(older).volume_model is None
    qc.run(QcConfig(plots=False, workers=1), qc.Inputs(qc_seg, tuple(fold_nvaes), older), tmp_path / "c")
    assert "pred_vdice" not in pd.read_csv(tmp_path / "c" / "patients.csv")
    for change, error in (
        ({"kind": "seg-model"}, FileKindError),
        ({"format": "something-else"}, FileKindError),
        ({"schema_version": 99}, SchemaVersionError),
        ({"renamed": True}, None),  # a feature this version does not know
        ({"slice_model": {**d["slice_model"], "classes": {}}}, None),
        ({"volume_model": {**vm, "type": "tree"}}, None),
    ):
        bad = tmp_path / "bad.json"
        text = json.dumps({**d, **change})
        bad.write_text(text.replace('"prob_dice_rv"', '"no_such_feature"') if "renamed" in change else text)
        with pytest.raises(error or BadInputError):
            Calibration.load(bad)
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(FileKindError):
        Calibration.load(tmp_path / "text.json")


def test_corrupted_masks_score_worse_than_their_clean_version(calibration, prepped, fold_nvaes, tmp_path, write_qc_seg):
    path, _, _ = calibration
    n = len(pd.read_csv(path.with_name("oof.csv")))
    sev = np.zeros(n)
    sev[::2] = 1.0  # every other slice badly corrupted (eroded structure + stray blob)
    clean = write_qc_seg(prepped, tmp_path / "clean.h5", severity=np.zeros(n), seed=5)
    dirty = write_qc_seg(prepped, tmp_path / "dirty.h5", severity=sev, seed=5)
    out = {}
    for name, seg in (("clean", clean), ("dirty", dirty)):
        qc.run(QcConfig(plots=False, workers=1), qc.Inputs(seg, tuple(fold_nvaes), path), tmp_path / name)
        out[name] = pd.read_csv(tmp_path / name / "slices.csv")
    c, d = out["clean"], out["dirty"]
    hit = sev > 0
    hit &= (c["gt_dice"] == 1).to_numpy() & (d["gt_dice"] < 1).to_numpy()  # rows the corruption changed
    assert hit.sum() > 10
    worse = d["pred_dice"].to_numpy()[hit] < c["pred_dice"].to_numpy()[hit]
    assert worse.mean() > 0.9
    # single signals too (the untrained test NVAEs make the risk score meaningless here)
    assert (d["prob_dice_mean"].to_numpy()[hit] < c["prob_dice_mean"].to_numpy()[hit]).mean() > 0.9
    assert d["n_failed"].to_numpy()[hit].mean() > c["n_failed"].to_numpy()[hit].mean()
    pd_ = {k: pd.read_csv(tmp_path / k / "patients.csv") for k in out}
    assert (pd_["dirty"]["pred_dice"] < pd_["clean"]["pred_dice"]).mean() > 0.8


def test_qc_with_ground_truth_scores_itself_and_uses_held_out_nvaes(qc_seg, fold_nvaes, tmp_path):
    res = qc.run(QcConfig(plots=True, workers=2, batch_size=16), qc.Inputs(qc_seg, tuple(fold_nvaes)), tmp_path / "q")
    qc.run(QcConfig(plots=False, workers=1, batch_size=50), qc.Inputs(qc_seg, tuple(fold_nvaes)), tmp_path / "q1")
    a, b = (pd.read_csv(tmp_path / d / "slices.csv") for d in ("q", "q1"))
    pd.testing.assert_frame_equal(a, b)  # worker processes and batch size change nothing
    s = res.summary
    assert s["nvae"]["held_out"] == {"yes": s["patients"]}
    slices = pd.read_csv(tmp_path / "q" / "slices.csv")
    # each patient's fold model never trained on it: checkpoint index == the patient's fold here
    assert (slices["nvae_checkpoint"] == slices["fold"]).all()
    assert set(s["scores_vs_gt"]) == {"slice", "patient", "patient_volume"}
    assert "predicted" not in s["scores_vs_gt"]["slice"] and "predicted" not in s["scores_vs_gt"]["patient_volume"]
    assert {"prob_vdice", "nvae_vdice", "entropy_fg"} <= set(s["scores_vs_gt"]["patient_volume"]["signals"])
    assert {"gt_dice", "entropy_fg", "nvae_dice_mean", "jump_max", "valid"} <= set(slices.columns)


def test_patient_dice_choice_is_checked():
    with pytest.raises(ConfigError, match="--patient-dice"):
        QcConfig(patient_dice="pixels")
