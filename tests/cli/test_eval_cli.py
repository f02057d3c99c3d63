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
