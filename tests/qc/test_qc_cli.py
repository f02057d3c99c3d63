"""`acdctool qc`, `qc-calibrate` and `eval --qc` from the command line: outputs and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.conventions import CLASSES
from acdctool.qc.scoring import auc

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def hand_prediction(slices, feature):
    present = np.stack([slices[f"area_{c}"] > 0 for c in CLASSES], axis=1)
    return np.where(present, np.clip(slices[feature].to_numpy()[:, None], 0, 1), 1.0).mean(axis=1)


def test_qc_prints_its_folder_and_json(qc_seg, tmp_path):
    out = tmp_path / "qc"
    res = invoke("qc", qc_seg, "-o", out, "--no-plots")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    assert "needs a calibration" in res.stderr and "flagged" in res.stderr
    res = invoke("qc", qc_seg, "-o", out, "--no-plots", "--json", "--force", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["slices"] == len(pd.read_csv(out / "slices.csv"))
    res = invoke("qc", qc_seg, "-o", out, "--no-plots")
    assert res.exit_code == 73 and "already exists" in res.stderr


def test_qc_with_hand_calibration_and_eval_scores_it(qc_seg, tmp_path, hand_calibration):
    cal = hand_calibration(tmp_path / "cal.json", ["prob_dice_mean", "invalid"])
    out = tmp_path / "qc"
    res = invoke("qc", qc_seg, "-o", out, "--calibration", cal, "--flag-below", "0.9")
    assert res.exit_code == 0, res.output
    slices = pd.read_csv(out / "slices.csv")
    np.testing.assert_allclose(slices["pred_dice"], hand_prediction(slices, "prob_dice_mean"), atol=1e-5)
    assert (slices["flag"] == (slices["pred_dice"] < 0.9)).all()
    flags = pd.read_csv(out / "flags.csv")
    assert (flags["level"] == "slice").sum() == slices["flag"].sum()
    report = tmp_path / "report"
    res = invoke("eval", qc_seg, "--qc", out, "-o", report, "--no-plots", "--no-hausdorff", "--json")
    assert res.exit_code == 0, res.output
    q = json.loads(res.stdout)["qc"]
    table = pd.read_csv(report / "slices.csv")
    merged = slices.merge(table[["patient", "phase", "slice", "dice_mean"]], on=["patient", "phase", "slice"])
    expected = auc(-merged["pred_dice"].to_numpy(), merged["dice_mean"].to_numpy() < 0.8)
    assert q["slice"]["predicted"]["auc"] == pytest.approx(expected)
    scores = pd.read_csv(report / "qc_scores.csv")
    assert {"predicted_dice", "entropy_fg", "n_failed"} <= set(scores["score"]) and set(scores["level"]) == {
        "slice",
        "patient",
        "patient_volume",
    }
    assert "QC (slices" in res.stderr
    # patients' volume Dice: eval's volumes.csv is the truth the volume signals are scored against
    vols = pd.read_csv(report / "volumes.csv").groupby("patient")["dice_mean"].mean()
    pats = pd.read_csv(out / "patients.csv").set_index("patient")
    rho = spearmanr(pats.loc[vols.index, "prob_vdice"], vols.to_numpy())[0]
    assert len(vols) > 3 and q["patient_volume"]["signals"]["prob_vdice"]["spearman"] == pytest.approx(rho)
    assert "predicted" not in q["patient_volume"]  # a hand calibration without a volume model


def test_qc_exit_codes_for_bad_inputs(prepped, qc_seg, tmp_path, write_qc_seg, qc_nvae_checkpoint, hand_calibration):
    nogt = write_qc_seg(prepped, tmp_path / "noprobs.h5", probs=False)
    n12 = qc_nvae_checkpoint(tmp_path / "n12.pt", fold=None, folds={}, in_channels=12)
    needs_nvae = hand_calibration(tmp_path / "nv.json", ["nvae_dice_mean"])
    needs_probs = hand_calibration(tmp_path / "pr.json", ["prob_dice_mean"])
    wrong_kind = tmp_path / "wrong.json"
    wrong_kind.write_text(json.dumps({**json.loads(needs_probs.read_text()), "kind": "something"}))
    cases = [
        (("qc", prepped, "-o", tmp_path / "a"), 65, "no 'pred'"),
        (("qc", qc_seg, "--nvae", n12, "-o", tmp_path / "b"), 65, "3-gram NVAE"),
        (("qc", qc_seg, "--calibration", needs_nvae, "-o", tmp_path / "c"), 65, "--nvae"),
        (("qc", nogt, "--calibration", needs_probs, "-o", tmp_path / "d"), 65, "probs"),
        (("qc", qc_seg, "--calibration", needs_probs, "--no-probs", "-o", tmp_path / "d2"), 65, "probs"),
        (("qc", qc_seg, "--calibration", wrong_kind, "-o", tmp_path / "e"), 65, "expected 'qc-calibration'"),
        (("qc", qc_seg, "--calibration", tmp_path / "none.json", "-o", tmp_path / "f"), 66, "no such"),
        (("qc", tmp_path / "none.h5", "-o", tmp_path / "g"), 66, "no such file"),
        (("qc", qc_seg, "-o", tmp_path / "h", "--flag-below", "2"), 2, "--flag-below"),
    ]
    for args, code, words in cases:
        res = invoke(*args)
        assert res.exit_code == code, (args, res.output)
        assert words in res.stderr, (args, res.stderr)
        assert not args[args.index("-o") + 1].exists()  # nothing written on failure


def test_qc_calibrate_exit_codes(prepped, qc_seg, tmp_path, write_qc_seg):
    nogt = write_qc_seg(prepped, tmp_path / "nogt.h5", gt=False)
    cases = [
        (("qc-calibrate", nogt, "-o", tmp_path / "a.json"), 65, "no ground truth"),
        (("qc-calibrate", qc_seg, "--features", "mask,nvae", "-o", tmp_path / "b.json"), 2, "--nvae"),
        (("qc-calibrate", qc_seg, "--features", "shape", "-o", tmp_path / "c.json"), 2, "--features"),
        (("qc-calibrate", qc_seg, "-o", qc_seg, "--force"), 73, "also an input"),
    ]
    for args, code, words in cases:
        res = invoke(*args)
        assert res.exit_code == code, (args, res.output)
        assert words in res.stderr, (args, res.stderr)


def test_qc_calibrate_mask_only_then_qc(qc_seg, tmp_path):
    cal = tmp_path / "cal.json"
    res = invoke("qc-calibrate", qc_seg, "--features", "mask", "-o", cal, "--oof", tmp_path / "oof.csv")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(cal) and "predicted Dice" in res.stderr
    d = json.loads(cal.read_text())
    assert d["requires"] == ["mask"] and all(not f.startswith(("prob", "nvae")) for f in d["features"])
    # mask features only: the volume line falls back to the slices' mean expected Dice
    assert d["volume_model"]["feature"] == "pred_mean"
    nob = tmp_path / "nob.json"
    res = invoke("qc-calibrate", qc_seg, "--features", "mask", "--no-boost", "-o", nob, "-q")
    assert res.exit_code == 0, res.output
    e = json.loads(nob.read_text())
    assert "slice_boost" not in e and set(e["oof"]["slice_models"]) == {"median", "chosen"}
    assert e["config"]["boost"] is False
    res = invoke("qc", qc_seg, "--calibration", cal, "--no-probs", "-o", tmp_path / "qc", "--no-plots")
    assert res.exit_code == 0, res.output
    assert "in-sample" in res.stderr
    assert pd.read_csv(tmp_path / "qc" / "slices.csv")["pred_dice"].between(0, 1).all()


def test_eval_qc_of_another_file_fails(prepped, qc_seg, tmp_path, write_qc_seg):
    other = write_qc_seg(prepped, tmp_path / "other.h5", seed=3)
    out = tmp_path / "qc"
    assert invoke("qc", other, "-o", out, "--no-plots", "-q").exit_code == 0
    with_row_less = pd.read_csv(out / "slices.csv").iloc[:-1]
    with_row_less.to_csv(out / "slices.csv", index=False)
    res = invoke("eval", qc_seg, "--qc", out, "-o", tmp_path / "r", "--no-plots", "--no-hausdorff")
    assert res.exit_code == 65 and "match" in res.stderr
    res = invoke("eval", qc_seg, "--qc", tmp_path / "nowhere", "-o", tmp_path / "r2", "--no-plots")
    assert res.exit_code == 66
    res = invoke("eval", qc_seg, "--native", "--qc", out, "-o", tmp_path / "r3", "--no-plots")
    assert res.exit_code == 2 and "--native" in res.stderr
