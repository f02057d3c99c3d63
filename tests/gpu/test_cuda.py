"""The gpu lane (``pytest -m gpu``; skipped without CUDA): the CUDA code paths on tiny synthetic data.

CUDA kernels add in another order than the CPU's (and bf16 autocast rounds), so a label whose
scores nearly tie may flip: the device comparisons allow 1% of pixels to differ.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.checkpoint import load_checkpoint
from acdctool.io.slices import SliceFile

pytestmark = pytest.mark.gpu

runner = CliRunner()
TINY_SEG = ["--net-arg", "channels=4,8,16", "--batch-size", "8", "--epochs", "1", "--fold", "0"]


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _stray_blobs(gt: np.ndarray, index: pd.DataFrame) -> np.ndarray:
    """pred_fn: a stray LV blob in a corner of every third non-empty slice (invalid anatomy)."""
    for i in range(0, len(gt), 3):
        if gt[i].any():
            gt[i, 1:4, 1:4] = 3
    return gt


def test_train_seg_one_epoch_on_cuda_with_bf16(prepped, tmp_path):
    run = tmp_path / "run"
    invoke("train-seg", prepped, "-o", run, *TINY_SEG, "--device", "cuda", "--amp")
    ck = load_checkpoint(run / "best.pt", kinds=["seg-model"])  # onto the CPU
    assert ck.config["device"] == "cuda" and ck.config["amp"] is True
    assert all(t.device.type == "cpu" and t.isfinite().all() for t in ck.state_dict.values())
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 1 and all(math.isfinite(v) for v in metrics.select_dtypes("number").iloc[0])


def test_gen_seg_on_cuda_matches_cpu(prepped, tmp_path):
    run = tmp_path / "run"
    invoke("train-seg", prepped, "-o", run, *TINY_SEG, "--device", "cpu")
    preds = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"seg-{device}.h5"
        invoke("gen-seg", prepped, "--model", run / "best.pt", "-o", out, "--device", device)
        with SliceFile(out) as f:
            preds[device] = (f.index, f.read("pred"))
    (idx_cpu, cpu), (idx_cuda, cuda) = preds["cpu"], preds["cuda"]
    assert idx_cpu.equals(idx_cuda) and len(cpu) > 0
    assert (cpu == cuda).mean() >= 0.99


def test_refine_on_cuda_matches_cpu(seg_file_factory, nvae_checkpoint_factory, tmp_path):
    seg = seg_file_factory(_stray_blobs)
    ckpt = nvae_checkpoint_factory(tmp_path / "nvae.pt")
    outs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"refined-{device}.h5"
        invoke("refine", seg, "--nvae", ckpt, "-o", out, "--device", device)
        with SliceFile(out, kinds=("refined",)) as f:
            outs[device] = (f.index, f.read("pred"))
    (idx_cpu, cpu), (idx_cuda, cuda) = outs["cpu"], outs["cuda"]
    assert (cpu == cuda).mean() >= 0.99
    # the gate decides per slice; a flipped pixel may tip a borderline slice, not many
    assert (idx_cpu.refine_reason == idx_cuda.refine_reason).mean() >= 0.9
    kept = (idx_cpu.refine_reason == "valid-kept").to_numpy()
    with SliceFile(seg) as f:
        np.testing.assert_array_equal(cuda[kept], f.read("pred")[kept])  # valid slices untouched on either device


TINY_NVAE = ["--stem-channels", "4", "--scales", "2", "--groups-per-scale", "1,1", "--latent-channels", "4"]
TINY_NVAE += ["--beta", "1,1", "--warmup-steps", "10", "--batch-size", "8", "--epochs", "1", "--fold", "0"]


@pytest.mark.parametrize("compile_step", [False, True], ids=["eager", "compiled"])
def test_train_nvae_one_epoch_on_cuda_with_bf16(prepped, tmp_path, compile_step):
    run = tmp_path / "run"
    flag = "--compile" if compile_step else "--no-compile"
    invoke("train-nvae", prepped, "-o", run, *TINY_NVAE, "--device", "cuda", "--precision", "bf16", flag)
    ck = load_checkpoint(run / "last.pt", kinds=["nvae-model"])
    assert ck.config["device"] == "cuda" and ck.config["precision"] == "bf16"
    assert all(t.device.type == "cpu" and t.isfinite().all() for t in ck.state_dict.values())
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 1 and math.isfinite(metrics.train_loss.iloc[0]) and metrics.val_recon.iloc[0] > 0


def test_gen_seg_bf16_agrees_with_fp32_on_cuda(prepped, tmp_path):
    run = tmp_path / "run"
    invoke("train-seg", prepped, "-o", run, *TINY_SEG, "--device", "cuda")
    preds = {}
    for amp in ("--amp", "--no-amp"):
        out = tmp_path / f"seg{amp}.h5"
        invoke("gen-seg", prepped, "--model", run / "best.pt", "-o", out, "--device", "cuda", amp)
        with SliceFile(out) as f:
            preds[amp] = f.read("pred")
    assert preds["--amp"].shape == preds["--no-amp"].shape
    assert (preds["--amp"] == preds["--no-amp"]).mean() >= 0.99  # bf16 rounding flips near-ties only
