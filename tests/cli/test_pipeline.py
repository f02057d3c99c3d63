"""The whole pipeline through the CLI on tiny synthetic data, each stage reading the previous one's
output: synth → prep → train-seg (2 folds) → gen-seg → make-3gram → train-nvae → refine → eval."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.checkpoint import load_checkpoint
from acdctool.io.slices import SliceFile

runner = CliRunner()
TINY_NVAE = [
    *("--stem-channels", "4", "--scales", "2", "--groups-per-scale", "1,1", "--latent-channels", "4"),
    *("--beta", "1,1", "--warmup-steps", "10", "--batch-size", "16", "--device", "cpu", "--no-compile"),
]


def step(*args) -> str:
    """Run one command; it must succeed and print only its output path on stdout."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args[0]}: {res.output}"
    return res.stdout.strip()


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny nets on one thread (fixture in tests/conftest.py)."""


def test_synth_to_eval(tmp_path, tiny_seg_args):
    acdc, slices = tmp_path / "ACDC", tmp_path / "slices.h5"
    assert step("synth", acdc, "--patients", 2, "--test-patients", 0, "--seed", 3, "-q") == str(acdc)
    step("prep", acdc / "training", "-o", slices, "--size", 64, "--folds", 2, "--val-fraction", 0, "-q")
    with SliceFile(slices) as f:
        prep_index, n = f.index, len(f)
    assert prep_index.patient.nunique() == 2 and set(prep_index.fold) == {0, 1}

    runs = [tmp_path / f"unet-f{k}" for k in (0, 1)]
    for k, run in enumerate(runs):
        step("train-seg", slices, "-o", run, "--fold", k, "--epochs", 1, *tiny_seg_args, "-q")
    seg = tmp_path / "seg.h5"
    step("gen-seg", slices, *[a for run in runs for a in ("--model", run / "best.pt")], "-o", seg, "-q")
    with SliceFile(seg, kinds=("seg",)) as f:
        seg_index, pred, gt = f.index, f.read("pred"), f.read("gt")
    # out of fold: every prepped slice once, segmented by the one model that never trained on it
    assert len(seg_index) == n and set(seg_index.model) == {"unet"}
    assert seg_index.drop(columns="model").equals(prep_index.drop(columns="model"))

    seg3 = tmp_path / "seg3.h5"
    step("make-3gram", seg, "-o", seg3, "-q")
    with SliceFile(seg3, kinds=("3gram",)) as f:
        context = f.read("context")
    assert context.shape == (n, 3, 64, 64)
    np.testing.assert_array_equal(context[:, 1], pred)

    nvaes = [tmp_path / f"nvae-f{k}" / "best.pt" for k in (0, 1)]  # one per fold: refine refuses seen patients
    for k, nvae in enumerate(nvaes):
        step("train-nvae", seg3, "--context", "3gram", "--fold", k, "-o", nvae.parent, "--epochs", 1, *TINY_NVAE, "-q")
        assert load_checkpoint(nvae, kinds=("nvae-model",)).model_args["in_channels"] == 12

    refined = tmp_path / "refined.h5"
    given = [a for nvae in nvaes for a in ("--nvae", nvae)]
    step("refine", seg3, "--context", "3gram", *given, "-o", refined, "--device", "cpu", "-q")
    with SliceFile(refined, kinds=("refined",)) as f:
        ref_index, after = f.index, f.read("pred")
        np.testing.assert_array_equal(f.read("gt"), gt)
    assert len(ref_index) == n
    # each patient refined by its own fold's NVAE, which validated on it and never trained on it
    assert (ref_index.refine_model == "f" + ref_index.fold.astype(str)).all()
    assert (ref_index.refine_nvae_seen == 0).all()
    unchanged = ref_index.refine_changed.to_numpy() == 0
    np.testing.assert_array_equal(after[unchanged], pred[unchanged])
    assert (after[~unchanged] != pred[~unchanged]).any(axis=(1, 2)).all()

    report = tmp_path / "report"
    res = runner.invoke(app, ["eval", str(refined), "--baseline", str(seg), "-o", str(report), "--json", "--no-plots"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary == json.loads((report / "summary.json").read_text())
    c = summary["comparison"]
    assert c["rows"] == n and c["improved"] + c["unchanged"] + c["deteriorated"] == n
    slices_table = pd.read_csv(report / "slices.csv")
    assert len(slices_table) == n == summary["slices"]["n"]
    assert len(pd.read_csv(report / "volumes.csv")) == 2 * 2  # patients × (ED, ES)
    assert len(pd.read_csv(report / "clinical.csv")) == 2
