"""`acdctool eval` through the CLI: outputs, conventions, before/after comparison, bad inputs."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _erase_lv(slices):
    """pred_fn: remove the LV (label 3 → 2) on the given row numbers."""

    def fn(gt, index):
        for r in slices:
            gt[r][gt[r] == 3] = 2
        return gt

    return fn


def test_ground_truth_against_itself(prepped, tmp_path):
    out = tmp_path / "report"
    res = invoke("eval", prepped, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["source"] == "gt vs gt (self-check)"
    assert all(v == 1.0 for v in s["slices"]["dice"].values())
    assert all(v == 0.0 for v in s["slices"]["hd_mm"].values() if v is not None)
    assert all(v == 1.0 for v in s["volumes"]["dice"].values())
    assert {"slices.csv", "volumes.csv", "clinical.csv", "summary.json", "dice_violin.png", "montage_worst.png"} <= {
        p.name for p in out.iterdir()
    }
    table = pd.read_csv(out / "slices.csv")
    assert len(table) == s["slices"]["n"] and set(table.position) <= {"base", "mid", "apex"}
    assert set(s["by"]["position"]) == {"base", "mid", "apex"}
    clinical = pd.read_csv(out / "clinical.csv")
    assert len(clinical) == 5 and np.allclose(clinical.lv_edv_pred, clinical.lv_edv_gt)
    # empty slices are reported under the both-empty convention, not hidden
    empty = table[(table.dice_lv_conv == "both_empty")]
    assert (empty.dice_lv == 1.0).all()


def test_errors_are_counted_and_montaged(seg_file_factory, tmp_path):
    seg = seg_file_factory(_erase_lv([3, 10]))
    out = tmp_path / "r"
    res = invoke("eval", seg, "-o", out)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    table = pd.read_csv(out / "slices.csv")
    lv_rows = table[table.dice_lv < 1]
    assert set(lv_rows.index) <= {3, 10} and len(lv_rows) >= 1
    assert "Dice (slice)" in res.stderr


def test_baseline_comparison(seg_file_factory, tmp_path):
    before = seg_file_factory(_erase_lv([3, 10, 12]), name="before.h5")
    # "after" fixes rows 3 and 10, breaks row 20, leaves the rest as they were
    after = seg_file_factory(_erase_lv([12, 20]), name="after.h5", kind="refined")
    out = tmp_path / "cmp"
    res = invoke("eval", after, "--baseline", before, "-o", out, "--json", "--top-k", 3)
    assert res.exit_code == 0, res.output
    c = json.loads(res.stdout)["comparison"]
    table = pd.read_csv(out / "slices.csv")
    has_lv = lambda r: table.loc[r, "dice_lv_conv"] != "both_empty"  # noqa: E731
    assert c["improved"] == sum(has_lv(r) for r in (3, 10))
    assert c["deteriorated"] == int(has_lv(20))
    assert c["improved"] + c["unchanged"] + c["deteriorated"] == len(table)
    assert {r["row"] for r in c["top_improved"]} <= {3, 10}
    for name in ("dice_delta_hist.png", "dice_scatter.png", "montage_improved.png", "montage_deteriorated.png"):
        assert (out / name).stat().st_size > 1000
    deltas = pd.read_csv(out / "comparison.csv")
    assert len(deltas) == len(table) and set(deltas.outcome) <= {"improved", "unchanged", "deteriorated"}


def test_gt_from_other_file_matches_by_key_not_position(prepped, tmp_path):
    from acdctool.io.slices import SliceFile, SliceWriter

    with SliceFile(prepped) as f:
        index, image, gt = f.index, f.read("image"), f.read("gt")
    order = np.arange(len(index))[::-1]  # same rows, reversed: position matching would fail
    shuffled = tmp_path / "pred.h5"
    idx = index.iloc[order].reset_index(drop=True)
    with SliceWriter(
        shuffled,
        kind="seg",
        config={},
        provenance={},
        shape=gt.shape[1:],
        arrays={"image": ("float32", ()), "pred": ("uint8", ())},
    ) as w:
        w.append(idx, image=image[order], pred=gt[order])
    res = invoke("eval", shuffled, "--gt", prepped, "-o", tmp_path / "r", "--json", "--no-plots")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["slices"]["dice"]["mean"] == 1.0


def test_no_ground_truth(prepped, tmp_path):
    from acdctool.io.slices import SliceFile, SliceWriter

    with SliceFile(prepped) as f:
        index, image, gt = f.index, f.read("image"), f.read("gt")
    pred_only = tmp_path / "p.h5"
    with SliceWriter(
        pred_only,
        kind="seg",
        config={},
        provenance={},
        shape=gt.shape[1:],
        arrays={"image": ("float32", ()), "pred": ("uint8", ())},
    ) as w:
        w.append(index, image=image, pred=gt)
    res = invoke("eval", pred_only, "-o", tmp_path / "r")
    assert res.exit_code == 65 and "--gt" in res.stderr
    assert not (tmp_path / "r").exists()


def test_unmatched_rows_named(prepped, tmp_path):
    from acdctool.io.slices import SliceFile, SliceWriter

    with SliceFile(prepped) as f:
        index, image, gt = f.index.copy(), f.read("image"), f.read("gt")
    index.loc[0, "patient"] = "patient999"
    odd = tmp_path / "odd.h5"
    with SliceWriter(
        odd,
        kind="seg",
        config={},
        provenance={},
        shape=gt.shape[1:],
        arrays={"image": ("float32", ()), "pred": ("uint8", ())},
    ) as w:
        w.append(index, image=image, pred=gt)
    res = invoke("eval", odd, "--gt", prepped, "-o", tmp_path / "r")
    assert res.exit_code == 65 and "patient999" in res.stderr
    assert not (tmp_path / "r").exists() and list(tmp_path.glob(".r.*")) == []


@pytest.mark.parametrize(
    "corruption, code, needle",
    [
        ("labels", 65, "outside 0..3"),
        ("spacing", 65, "spacing"),
        ("version", 65, "schema version"),
    ],
)
def test_bad_files(seg_file_factory, tmp_path, corruption, code, needle):
    seg = seg_file_factory(lambda gt, idx: gt)
    with h5py.File(seg, "r+") as h5:
        if corruption == "labels":
            h5["pred"][2, 0, 0] = 9
        elif corruption == "spacing":
            h5["index/spacing_row"][4] = np.nan
        else:
            h5.attrs["schema_version"] = 7
    res = invoke("eval", seg, "-o", tmp_path / "r")
    assert res.exit_code == code and needle in res.stderr, res.output
    assert not (tmp_path / "r").exists()


def test_existing_report_needs_force(prepped, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = invoke("eval", prepped, "-o", out, "--no-plots")
    assert res.exit_code == 73 and (out / "keep.txt").exists()
    res = invoke("eval", prepped, "-o", out, "--no-plots", "--force")
    assert res.exit_code == 0 and not (out / "keep.txt").exists() and (out / "summary.json").exists()


def test_terminal_table_gives_n_and_no_distance_for_absent_structures():
    from acdctool.cli.common import err_console
    from acdctool.cli.eval import print_summary

    summary = {
        "source": "pred vs gt",
        "slices": {"n": 10},
        "volumes": {"n": 2},
        "anatomy": {"valid": 9, "invalid": 1, "valid_fraction": 0.9},
    }
    both = {"rv": (1.0, 10), "myo": (0.8, 10), "lv": (0.9, 10), "mean": (0.9, 10)}
    overview = {
        "slices": {"n": 10, "dice": both, "hd95_mm": {"rv": (None, 0), "myo": (2.5, 4), "lv": (1.25, 10)}},
        "volumes": {"n": 2, "dice": both, "hd_mm": {"rv": (None, 0), "myo": (3.0, 1), "lv": (2.0, 2)}},
    }
    with err_console.capture() as captured:
        print_summary(summary, overview)
    text = captured.get()
    hd95 = next(line for line in text.splitlines() if "HD95" in line)
    assert "2.50 (4)" in hd95 and "1.25 (10)" in hd95 and "0.00" not in hd95 and " - " in hd95
    assert "1.0000 (10)" in text and "slices or volumes the mean covers" in text


def _by_hand(index, pred, gt):
    """Per-slice Dice (N, 3), HD95 (N, 3) with contour flags, and per-patient clinical indices."""
    from acdctool.metrics import clinical, overlap

    spacing = index[["spacing_row", "spacing_col"]].to_numpy(np.float64)
    dice, codes = overlap.dice_batch(pred, gt)
    _, hd95, _ = overlap.hausdorff_batch(pred, gt, spacing)
    indices = {}
    for patient, part in index.groupby("patient"):
        rows = {ph: part.index[part.phase == ph][np.argsort(part.slice[part.phase == ph])] for ph in ("ED", "ES")}
        sp = (float(part.spacing_row.iloc[0]), float(part.spacing_col.iloc[0]))
        th = float(part.thickness.iloc[0])
        indices[patient] = (
            clinical.clinical_indices(pred[rows["ED"]], pred[rows["ES"]], sp, th),
            clinical.clinical_indices(gt[rows["ED"]], gt[rows["ES"]], sp, th),
        )
    return dice, hd95, codes == 0, indices


def test_comparison_fields_against_a_hand_computation(seg_file_factory, tmp_path):
    def before_fn(gt, index):
        gt = _erase_lv([3, 10, 12, 40])(gt, index)
        gt[5::7, 2:6, 2:6] = 3  # stray LV blobs
        return gt

    def after_fn(gt, index):
        gt = _erase_lv([12, 20, 41])(gt, index)
        gt[5::14, 2:6, 2:6] = 1  # some blobs now RV
        return gt

    before = seg_file_factory(before_fn, name="before.h5")
    after = seg_file_factory(after_fn, name="after.h5", kind="refined")
    out = tmp_path / "cmp"
    res = invoke("eval", after, "--baseline", before, "-o", out, "--json", "--no-plots", "--worse-threshold", 0.1)
    assert res.exit_code == 0, res.output
    c = json.loads(res.stdout)["comparison"]
    from acdctool.io.slices import SliceFile

    with SliceFile(before) as b, SliceFile(after) as a:
        index, gt, pred_b, pred_a = b.index, b.read("gt"), b.read("pred"), a.read("pred")
    d_b, hd_b, contour_b, clin_b = _by_hand(index, pred_b, gt)
    d_a, hd_a, contour_a, clin_a = _by_hand(index, pred_a, gt)
    delta = d_a.mean(1) - d_b.mean(1)
    bw = c["better_worse"]
    assert bw["threshold"] == 0.1 and bw["rows"] == len(index)
    assert (bw["better"], bw["worse"]) == (int((delta > 0.1).sum()), int((delta < -0.1).sum()))
    assert bw["better"] > 0 and bw["worse"] > 0
    for j, name in enumerate(("rv", "myo", "lv")):
        dj = d_a[:, j] - d_b[:, j]
        assert bw["per_class"][name] == {"better": int((dj > 0.1).sum()), "worse": int((dj < -0.1).sum())}
        both = contour_a[:, j] & contour_b[:, j]
        assert c["hd95_mm"][name]["n"] == int(both.sum())
        if both.any():
            assert c["hd95_mm"][name]["before"] == pytest.approx(hd_b[both, j].mean())
            assert c["hd95_mm"][name]["after"] == pytest.approx(hd_a[both, j].mean())
    assert c["hd95_mm"]["lv"]["before"] != c["hd95_mm"]["lv"]["after"]
    for name in ("lv_ef", "rv_ef", "lv_edv", "lv_esv", "rv_edv", "rv_esv", "myo_mass"):
        err_b = np.array([abs(clin_b[p][0][name] - clin_b[p][1][name]) for p in sorted(clin_b)])
        err_a = np.array([abs(clin_a[p][0][name] - clin_a[p][1][name]) for p in sorted(clin_a)])
        ok = np.isfinite(err_b) & np.isfinite(err_a)
        got = c["clinical_mae"][name]
        assert got["n"] == int(ok.sum())
        assert got["before"] == pytest.approx(err_b[ok].mean()) and got["after"] == pytest.approx(err_a[ok].mean())
    assert c["clinical_mae"]["lv_edv"]["before"] != c["clinical_mae"]["lv_edv"]["after"]
    deltas = pd.read_csv(out / "comparison.csv")
    np.testing.assert_allclose(deltas.hd95_lv_before.to_numpy(), hd_b[:, 2], rtol=1e-5, equal_nan=True)  # %.6g
    want = np.where(delta > 0.1, "better", np.where(delta < -0.1, "worse", "none"))
    assert (deltas.change.to_numpy() == want).all()
    res = invoke("eval", after, "--baseline", before, "-o", tmp_path / "t", "--no-plots")
    assert "better/worse by > 0.05 Dice" in res.stderr and "MAE LV EF %" in res.stderr
