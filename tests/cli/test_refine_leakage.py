"""`acdctool refine` with fold NVAEs: no leakage, per-fold assignment, probabilities, candidate families."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.slices import SliceFile

runner = CliRunner()
TINY = ["--stem-channels", "4", "--scales", "2", "--groups-per-scale", "1,1", "--latent-channels", "4"]
TINY += ["--beta", "1,1", "--warmup-steps", "10", "--batch-size", "16", "--epochs", "1", "--device", "cpu", "-q"]
TINY += ["--no-compile"]  # compiling takes minutes


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny nets on one thread (fixture in tests/conftest.py)."""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def fold_nvaes(prepped, tmp_path_factory):
    """Tiny NVAEs trained by train-nvae --fold 0 and --fold 1 on the prep file (one epoch each)."""
    root = tmp_path_factory.mktemp("nvae")
    out = {}
    for k in (0, 1):
        res = invoke("train-nvae", prepped, "--fold", k, "-o", root / f"f{k}", *TINY)
        assert res.exit_code == 0, res.output
        out[k] = root / f"f{k}" / "best.pt"
    return out


def _blobs(gt, index):
    for i in range(0, len(gt), 3):
        if gt[i].any():
            gt[i, 1:4, 1:4] = 3
    return gt


def _patients(path):
    with SliceFile(path) as f:
        first = f.index.drop_duplicates("patient")
    return first


def test_refuses_an_nvae_that_trained_on_a_patient_unless_allowed(seg_file_factory, fold_nvaes, prepped, tmp_path):
    seg = seg_file_factory(_blobs)
    first = _patients(prepped)
    seen = sorted(first.patient[(first.split == "train") & (first.fold == 1)])  # fold-0 NVAE trained on these
    assert seen
    out = tmp_path / "r.h5"
    res = invoke("refine", seg, "--nvae", fold_nvaes[0], "-o", out, "--device", "cpu")
    assert res.exit_code == 65, res.output
    assert all(p in res.stderr for p in seen) and "--allow-seen" in res.stderr and not out.exists()
    others = set(first.patient) - set(seen)
    assert not any(p in res.stderr for p in others)
    res = invoke("refine", seg, "--nvae", fold_nvaes[0], "-o", out, "--device", "cpu", "--allow-seen")
    assert res.exit_code == 0, res.output
    assert "trained on" in res.stderr  # the warning
    with SliceFile(out) as f:
        idx, config = f.index, json.loads(f.attrs["config"])
    assert config["allow_seen"] is True and [m["label"] for m in config["nvae"]] == ["f0"]
    np.testing.assert_array_equal(idx.refine_nvae_seen.to_numpy() == 1, idx.patient.isin(seen).to_numpy())


def test_each_patient_gets_the_nvae_of_its_fold(seg_file_factory, fold_nvaes, tmp_path):
    seg = seg_file_factory(_blobs)
    out = tmp_path / "r.h5"
    res = invoke("refine", seg, "--nvae", fold_nvaes[1], "--nvae", fold_nvaes[0], "-o", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    with SliceFile(out) as f:
        idx, config = f.index, json.loads(f.attrs["config"])
    np.testing.assert_array_equal(idx.refine_model.to_numpy(), ("f" + idx.fold.astype(str)).to_numpy())
    assert (idx.refine_nvae_seen == 0).all() and config["allow_seen"] is False
    assert {m["label"]: m["fold"] for m in config["nvae"]} == {"f1": 1, "f0": 0}
    assert all(m["train_patients_from"] == "stored" for m in config["nvae"])
    corrected = idx[idx.refine_reason == "corrected"]
    assert len(corrected) and (corrected.refine_family != "").all() and (corrected.refine_candidate != "").all()
    kept = idx[idx.refine_reason != "corrected"]
    assert (kept.refine_family == "").all()
    assert set(corrected.refine_family) <= {
        "morph",
        *(f + s for f in ("recon", "partial", "latent", "structure", "samples") for s in ("", "+polish")),
    }
    # two NVAEs for one fold: refused
    res = invoke("refine", seg, "--nvae", fold_nvaes[0], "--nvae", fold_nvaes[0], "-o", tmp_path / "x.h5")
    assert res.exit_code == 65 and "two NVAEs for fold 0" in res.stderr


def _confident(arrays):
    """A softmax that is confident about the file's pred (tests only)."""
    pred = arrays["pred"]
    probs = np.full((len(pred), 4, *pred.shape[1:]), 0.02, np.float16)
    np.put_along_axis(probs, pred[:, None].astype(np.intp), 0.94, axis=1)
    return probs


def test_probability_choice_needs_probs_and_is_stored(seg_file_factory, with_probs_factory, fold_nvaes, tmp_path):
    seg = seg_file_factory(_blobs)
    nvaes = ["--nvae", fold_nvaes[0], "--nvae", fold_nvaes[1]]
    res = invoke("refine", seg, *nvaes, "--choose", "soft-dice", "-o", tmp_path / "x.h5")
    assert res.exit_code == 65 and "--save-probs" in res.stderr and not (tmp_path / "x.h5").exists()
    seg_p, _ = with_probs_factory(seg, tmp_path / "seg_p.h5", _confident)
    seg3 = tmp_path / "seg3.h5"
    assert invoke("make-3gram", seg_p, "-o", seg3).exit_code == 0
    with SliceFile(seg3) as f:
        assert f.has("probs")  # make-3gram carries them to 3-gram refine
    for rule in ("soft-dice", "loglik"):
        out = tmp_path / f"{rule}.h5"
        res = invoke("refine", seg_p, *nvaes, "--choose", rule, "--candidates", "recon,partial", "-o", out)
        assert res.exit_code == 0, res.output
        with SliceFile(out) as f:
            idx, config = f.index, json.loads(f.attrs["config"])
        assert config["choose"] == rule and config["candidates"] == ["recon", "partial"]
        assert config["fallback"] == ["smooth", "empty", "repair"] and config["smooth_used"] is True  # the default
        assert config["empty_used"] is True and config["repair_used"] is True
        families = {"", "recon", "partial", "recon+polish", "partial+polish", "smooth", "empty", "repair"}
        assert set(idx.refine_family) <= families
        assert idx.refine_score.between(0, 1).all()
    res = invoke("refine", seg, *nvaes, "--candidates", "recon,bogus", "-o", tmp_path / "y.h5")
    assert res.exit_code == 2 and "--candidates" in res.stderr


def test_eval_reports_what_each_family_buys(seg_file_factory, fold_nvaes, tmp_path):
    seg = seg_file_factory(_blobs)
    out = tmp_path / "r.h5"
    assert invoke("refine", seg, "--nvae", fold_nvaes[0], "--nvae", fold_nvaes[1], "-o", out).exit_code == 0
    res = invoke("eval", out, "--baseline", seg, "-o", tmp_path / "rep", "--json", "--no-plots")
    assert res.exit_code == 0, res.output
    c = json.loads(res.stdout)["comparison"]
    with SliceFile(out) as f:
        idx = f.index
    want = idx.refine_family.replace("", "(kept)").value_counts().to_dict()
    assert {k: v["rows"] for k, v in c["by_family"].items()} == want
    deltas = pd.read_csv(tmp_path / "rep" / "comparison.csv", keep_default_na=False)
    assert (deltas.refine_family.to_numpy() == idx.refine_family.to_numpy()).all()
