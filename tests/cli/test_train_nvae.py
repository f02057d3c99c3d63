"""`acdctool train-nvae`: a tiny run per mode, checkpoint content, bad inputs, stability guard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.checkpoint import load_checkpoint

runner = CliRunner()
TINY = [
    "--no-compile",
    "--stem-channels",
    "4",
    "--scales",
    "2",
    "--groups-per-scale",
    "1,1",
    "--latent-channels",
    "4",
    "--beta",
    "1,1",
    "--warmup-steps",
    "10",
    "--batch-size",
    "16",
    "--device",
    "cpu",
    "-q",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny nets on one thread (fixture in tests/conftest.py)."""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_gt_mode_trains_and_checkpoints(prepped, tmp_path):
    run = tmp_path / "run"
    res = invoke("train-nvae", prepped, "-o", run, "--epochs", 2, *TINY)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(run)
    ck = load_checkpoint(run / "best.pt", kinds=("nvae-model",))
    assert ck.model_args["in_channels"] == 4 and ck.model_args["image_size"] == 64
    assert list(ck.config["betas"]) == [1.0, 1.0] and ck.data["input"] == "gt"
    from acdctool.io.slices import SliceFile

    with SliceFile(prepped) as f:  # refine's leakage check reads these
        first = f.index.drop_duplicates("patient")
    assert ck.data["train_patients"] == sorted(first.patient[first.split == "train"])
    assert ck.data["val_patients"] == sorted(first.patient[first.split == "val"])
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 2
    for col in ("val_recon", "val_kl_scale0", "val_kl_scale1", "val_dice_lv", "val_valid_fraction", "val_vdice_mean"):
        assert col in metrics and metrics[col].notna().all()
    assert metrics.val_vdice_mean.between(0, 1).all()
    assert ck.config["compile"] is False and ck.config["precision"] == "fp32"
    assert metrics.train_recon.iloc[1] < metrics.train_recon.iloc[0]  # it learns


def test_seg_and_3gram_modes(seg_file_factory, tmp_path):
    def noisy(gt, idx):
        gt[:, ::7, ::7] = 0  # a sparse grid of holes: something to denoise
        return gt

    seg = seg_file_factory(noisy)
    res = invoke("train-nvae", seg, "--input", "seg", "-o", tmp_path / "seg", "--epochs", 1, "--ema", 0.99, *TINY)
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(tmp_path / "seg" / "last.pt")
    assert ck.config["ema"] == 0.99 and ck.train["ema"]["updates"] > 0  # best.pt holds the average
    seg3 = tmp_path / "seg3.h5"
    assert invoke("make-3gram", seg, "-o", seg3).exit_code == 0
    res = invoke("train-nvae", seg3, "--context", "3gram", "-o", tmp_path / "g3", "--epochs", 1, *TINY)
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(tmp_path / "g3" / "last.pt")
    assert ck.model_args["in_channels"] == 12
    # the 3-gram checkpoint plugs into refine with the matching context; it trained on the
    # file's train split, which refine refuses to correct with it unless told (and then records)
    args = ["refine", seg3, "--context", "3gram", "--nvae", tmp_path / "g3" / "best.pt", "-o", tmp_path / "r.h5"]
    res = invoke(*args, "--device", "cpu")
    assert res.exit_code == 65 and "--allow-seen" in res.stderr
    res = invoke(*args, "--device", "cpu", "--allow-seen")
    assert res.exit_code == 0, res.output
    from acdctool.io.slices import SliceFile

    with SliceFile(tmp_path / "r.h5") as f:
        idx = f.index
    np.testing.assert_array_equal(idx.refine_nvae_seen == 1, idx.split == "train")


def test_bad_inputs_write_nothing(prepped, seg_file_factory, tmp_path):
    run = tmp_path / "run"
    seg = seg_file_factory(lambda gt, idx: gt)
    cases = [
        (["--context", "3gram"], prepped, 65, "make-3gram output"),
        (["--input", "seg"], prepped, 65, "segmentations"),
        (["--groups-per-scale", "1,1,1"], prepped, 2, "--groups-per-scale"),
        (["--beta", "8,10,11"], prepped, 2, "--beta"),
        (["--ema", "1"], prepped, 2, "--ema"),
    ]
    for extra, data, code, needle in cases:
        args = [*TINY, *extra]
        res = invoke("train-nvae", data, "-o", run, "--epochs", 1, *args)
        assert res.exit_code == code and needle in res.stderr, (extra, res.output)
        assert not run.exists()
    seg3 = tmp_path / "seg3.h5"
    invoke("make-3gram", seg, "-o", seg3)
    res = invoke("train-nvae", seg3, "-o", run, "--epochs", 1, *TINY)
    assert res.exit_code == 65 and "--context 3gram" in res.stderr and not run.exists()


def test_stability_guard_names_the_term_and_keeps_last_good(prepped, tmp_path, monkeypatch):
    from acdctool.models import nvae_loss

    run = tmp_path / "run"
    assert invoke("train-nvae", prepped, "-o", run, "--epochs", 1, *TINY).exit_code == 0
    good = (run / "last.pt").read_bytes()
    original = nvae_loss.NVAELoss.forward

    def exploding(self, output, target, step):
        loss, terms = original(self, output, target, step)
        terms["kl_scale1"] = torch.tensor(float("nan"))
        return loss, terms

    monkeypatch.setattr(nvae_loss.NVAELoss, "forward", exploding)
    res = invoke("train-nvae", prepped, "-o", run, "--epochs", 2, "--resume", *TINY)
    assert res.exit_code == 1 and "kl_scale1" in res.stderr and "warm-up" in res.stderr, res.output
    assert (run / "last.pt").read_bytes() == good
