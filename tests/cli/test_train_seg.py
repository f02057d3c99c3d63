"""`acdctool train-seg` through the CLI: run folder, checkpoint content, resume/force, bad inputs, SIGTERM."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.checkpoint import file_sha256, load_checkpoint
from acdctool.io.slices import SliceFile, SliceWriter

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny nets on one thread (fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def slices(seg_slices) -> Path:
    return seg_slices


@pytest.fixture(scope="module")
def fold0_run(slices, tmp_path_factory, tiny_seg_args) -> Path:
    run = tmp_path_factory.mktemp("runs") / "unet-f0"
    res = invoke("train-seg", slices, "-o", run, "--fold", 0, "--epochs", 2, *tiny_seg_args)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(run)
    return run


def test_train_writes_self_describing_checkpoints(slices, fold0_run):
    assert sorted(p.name for p in fold0_run.iterdir()) == ["best.pt", "last.pt", "metrics.csv"]
    ck = load_checkpoint(fold0_run / "last.pt", kinds=["seg-model"])
    assert ck.model_name == "unet" and tuple(ck.model_args["channels"]) == (4, 8, 16)
    assert ck.config["_config"] == "TrainSegConfig" and ck.config["fold"] == 0 and ck.config["lr"] == 1e-3
    assert ck.data["sha256"] == file_sha256(slices) and ck.fold == 0
    with SliceFile(slices) as f:
        idx = f.index
    folds = ck.data["folds"]
    assert folds == {p: int(k) for p, k in zip(idx.patient, idx.fold, strict=False)}
    assert all(folds[p] == 1 for p in ck.data["train_patients"])  # trained only on the other fold
    assert all(folds[p] == 0 for p in ck.data["val_patients"])
    assert set(ck.versions) >= {"acdctool", "torch", "monai", "python"}
    assert ck.train["epoch"] == 2 and {"optimizer", "scheduler", "rng"} <= set(ck.train)
    assert {"val_dice_rv", "val_dice_myo", "val_dice_lv", "val_dice_mean"} <= set(ck.metrics)
    lines = (fold0_run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss,val_dice_rv") and len(lines) == 3
    best = load_checkpoint(fold0_run / "best.pt")
    assert best.metrics["val_dice_mean"] == max(r["val_dice_mean"] for r in ck.train["history"])


def test_existing_run_folder_needs_resume_or_force(slices, fold0_run, tiny_seg_args):
    before = (fold0_run / "last.pt").stat().st_mtime_ns
    res = invoke("train-seg", slices, "-o", fold0_run, "--fold", 0, "--epochs", 2, *tiny_seg_args)
    assert res.exit_code == 73 and "--resume" in res.output
    res = invoke("train-seg", slices, "-o", fold0_run, "--fold", 0, "--epochs", 2, "--resume", *tiny_seg_args)
    assert res.exit_code == 0 and "already trained" in res.output
    assert (fold0_run / "last.pt").stat().st_mtime_ns == before


def test_resume_continues_to_more_epochs(slices, fold0_run, tmp_path, tiny_seg_args):
    run = tmp_path / "run"
    shutil.copytree(fold0_run, run)
    res = invoke("train-seg", slices, "-o", run, "--fold", 0, "--epochs", 3, "--resume", *tiny_seg_args)
    assert res.exit_code == 0, res.output
    assert "epoch 3/3" in res.output and "epoch 1/3" not in res.output
    assert load_checkpoint(run / "last.pt").train["epoch"] == 3
    res = invoke("train-seg", slices, "-o", run, "--fold", 0, "--epochs", 1, "--force", *tiny_seg_args)
    assert res.exit_code == 0 and load_checkpoint(run / "last.pt").train["epoch"] == 1


def _without(slices: Path, out: Path, drop: str = "", nan_row: int | None = None) -> Path:
    with SliceFile(slices) as f:
        idx, image, gt = f.index, f.read("image"), f.read("gt")
    if nan_row is not None:
        image[nan_row] = np.nan
    data = {"image": image, "gt": gt}
    data.pop(drop, None)
    with SliceWriter(
        out,
        kind="prep",
        config={},
        provenance={},
        shape=image.shape[1:],
        arrays={k: (str(v.dtype), ()) for k, v in data.items()},
    ) as w:
        w.append(idx, **data)
    return out


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("no-gt", 65, "no ground-truth masks"),
        ("bad-fold", 65, "--fold 7 is not a fold"),
        ("cuda", 2, "no CUDA device"),
        ("tensorboard", 2, "tensorboard package"),
        ("nan", 65, "has NaN or infinite values"),
        ("net-arg", 2, "not an argument of unet"),
        ("missing", 66, "no such file"),
        ("seg-file", 65, "a 'seg' file"),
    ],
)
def test_bad_inputs_leave_nothing(slices, tmp_path, case, code, message, tiny_seg_args):
    run, src, extra = tmp_path / "run", slices, ["--fold", 0]
    if case == "no-gt":
        src = _without(slices, tmp_path / "nogt.h5", drop="gt")
    elif case == "bad-fold":
        extra = ["--fold", 7]
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra += ["--device", "cuda"]
    elif case == "tensorboard":
        if importlib.util.find_spec("tensorboard") is not None:
            pytest.skip("tensorboard is installed")
        extra += ["--tensorboard"]
    elif case == "nan":
        with SliceFile(slices) as f:
            first_train = int(np.flatnonzero((f.index.split == "train") & (f.index.fold == 1))[0])
        src = _without(slices, tmp_path / "nan.h5", nan_row=first_train)
    elif case == "net-arg":
        extra += ["--net-arg", "chanels=4,8"]
    elif case == "missing":
        src = tmp_path / "nope.h5"
    elif case == "seg-file":
        with SliceFile(slices) as f:
            idx, image, gt = f.index, f.read("image"), f.read("gt")
        src = tmp_path / "seg.h5"
        with SliceWriter(
            src,
            kind="seg",
            config={},
            provenance={},
            shape=image.shape[1:],
            arrays={"image": ("float32", ()), "gt": ("uint8", ())},
        ) as w:
            w.append(idx, image=image, gt=gt)
    res = invoke("train-seg", src, "-o", run, "--epochs", 1, *tiny_seg_args, *extra)
    assert res.exit_code == code, res.output
    assert message in res.output and res.output.count("\n") <= 2
    assert not run.exists()


@pytest.mark.slow
def test_sigterm_saves_last_and_exits_143(slices, tmp_path, tiny_seg_args):
    acdctool = shutil.which("acdctool")
    if acdctool is None:
        pytest.skip("acdctool entry point not on PATH")
    run = tmp_path / "run"
    cmd = [acdctool, "train-seg", str(slices), "-o", str(run), "--fold", "0", "--epochs", "500", *tiny_seg_args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]  # 128 + SIGTERM, the shell's convention
    assert "interrupted (SIGTERM)" in err and "--resume" in err and out == ""
    ck = load_checkpoint(run / "last.pt")
    done = ck.train["epoch"]
    assert 1 <= done < 500
    res = invoke("train-seg", slices, "-o", run, "--fold", 0, "--epochs", done + 1, "--resume", *tiny_seg_args)
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "last.pt").train["epoch"] == done + 1
