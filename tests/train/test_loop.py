"""The trainer: exact resume, divergence guard, resume checks, and a 2-process DDP run (gloo)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace

import pytest
import torch

from acdctool.config import TrainSegConfig, config_to_dict
from acdctool.data.loader import SliceDataset, select_rows
from acdctool.errors import BadInputError, ConfigError, TrainingDivergedError
from acdctool.io.checkpoint import file_sha256, load_checkpoint
from acdctool.io.slices import SliceFile
from acdctool.models.seg import resolve_args
from acdctool.stages import train_seg as stage
from acdctool.train.loop import LoopSettings, Trainer
from acdctool.train.tasks import SegTask

TINY_NET = ("channels=4,8,16",)
CFG = TrainSegConfig(arch="unet", net_args=TINY_NET, fold=0, epochs=2, batch_size=4, device="cpu")


def _same_state(a, b):
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    ea, eb = a.train["optimizer"]["state"], b.train["optimizer"]["state"]
    assert all(torch.equal(ea[i]["exp_avg_sq"], eb[i]["exp_avg_sq"]) for i in ea)


def test_resume_mid_epoch_is_bit_identical(tiny_h5, tmp_path):
    """2 epochs straight == stopped inside epoch 1, resumed, stopped at the epoch boundary, resumed."""
    full = stage.run(CFG, stage.Inputs(tiny_h5), tmp_path / "full")
    assert full.status == "completed" and full.epoch == 2
    part = stage.run(CFG, stage.Inputs(tiny_h5), tmp_path / "part", should_stop=lambda e, s: (e, s) == (0, 2))
    assert (part.status, part.epoch, part.step) == ("interrupted", 0, 2)
    assert load_checkpoint(tmp_path / "part" / "last.pt").train["step"] == 2
    part = stage.run(
        CFG, stage.Inputs(tiny_h5), tmp_path / "part", resume=True, should_stop=lambda e, s: (e, s) == (1, 0)
    )
    assert (part.status, part.epoch, part.step) == ("interrupted", 1, 0) and part.resumed_from == 0
    part = stage.run(
        CFG, stage.Inputs(tiny_h5), tmp_path / "part", resume=True, should_stop=lambda e, s: (e, s) == (1, 1)
    )
    assert (part.status, part.epoch, part.step) == ("interrupted", 1, 1) and part.resumed_from == 1
    part = stage.run(CFG, stage.Inputs(tiny_h5), tmp_path / "part", resume=True)
    assert part.status == "completed" and part.epoch == 2
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    _same_state(a, b)
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert strip(a.train["history"]) == strip(b.train["history"])
    assert (tmp_path / "part" / "metrics.csv").read_text().count("\n") == 3
    # Rerunning a finished run is a no-op; resuming with other settings or data is refused.
    assert stage.run(CFG, stage.Inputs(tiny_h5), tmp_path / "part", resume=True).status == "up-to-date"
    with pytest.raises(ConfigError, match="lr=0.001 \\(now 0.01\\)"):
        stage.run(replace(CFG, epochs=3, lr=0.01), stage.Inputs(tiny_h5), tmp_path / "part", resume=True)
    other = tmp_path / "other.h5"
    shutil.copy(tiny_h5, other)
    with open(other, "ab") as fh:
        fh.write(b"\0")  # same content, different bytes: another file as far as the hash goes
    with pytest.raises(BadInputError, match="another data file"):
        stage.run(replace(CFG, epochs=3), stage.Inputs(other), tmp_path / "part", resume=True)


def test_objects_alive_after_the_first_step_are_frozen_during_the_run(tiny_h5, tmp_path):
    """gc.freeze from the first step's end to fit's return (full collections would re-scan the
    compiled graphs' objects); nothing stays frozen afterwards, even when the run fails."""
    import gc

    counts: list[int] = []

    def record(epoch: int, step: int) -> bool:
        counts.append(gc.get_freeze_count())
        return False

    assert gc.get_freeze_count() == 0
    result = stage.run(replace(CFG, epochs=1), stage.Inputs(tiny_h5), tmp_path / "run", should_stop=record)
    assert result.status == "completed" and len(counts) >= 2
    assert all(c > 0 for c in counts)  # checked after each step: the first step froze them
    assert gc.get_freeze_count() == 0

    def fail(epoch: int, step: int) -> bool:
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        stage.run(replace(CFG, epochs=1), stage.Inputs(tiny_h5), tmp_path / "failed", should_stop=fail)
    assert gc.get_freeze_count() == 0


def test_train_val_split_and_lazy_workers(tiny_h5, tmp_path):
    """Without --fold: the file's train/val split; rows read lazily by a DataLoader worker."""
    cfg = replace(CFG, fold=None, epochs=1, workers=1, cache=False)
    result = stage.run(cfg, stage.Inputs(tiny_h5), tmp_path / "run")
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert result.status == "completed" and ck.fold is None and result.best_epoch == 1
    assert ck.data["train_patients"] == ["patient001", "patient002", "patient003", "patient004"]
    assert ck.data["val_patients"] == ["patient005", "patient006"]


class _NanAtEpoch(SegTask):
    """The seg task, returning a NaN loss from the given epoch on."""

    def __init__(self, bad_epoch, **kw):
        super().__init__(**kw)
        self.bad_epoch = bad_epoch

    def train_step(self, model, batch, ctx):
        loss, metrics = super().train_step(model, batch, ctx)
        return (loss * float("nan") if ctx.epoch >= self.bad_epoch else loss), metrics


def test_divergence_keeps_last_good_checkpoint(tiny_h5, tmp_path):
    with SliceFile(tiny_h5) as f:
        train_rows, val_rows = select_rows(f.index, 0)
    train_ds, val_ds = SliceDataset(tiny_h5, train_rows), SliceDataset(tiny_h5, val_rows)
    task = _NanAtEpoch(
        1,
        arch="unet",
        model_args=resolve_args("unet", {"channels": (4, 8, 16)}),
        lr=1e-3,
        n_val_volumes=val_ds.n_volumes,
    )
    run = tmp_path / "run"
    trainer = Trainer(
        task, LoopSettings.from_config(CFG), run, config=config_to_dict(CFG), data={"sha256": file_sha256(tiny_h5)}
    )
    with pytest.raises(TrainingDivergedError, match="diverged at epoch 2.*last good checkpoint kept"):
        trainer.fit(train_ds, val_ds)
    last = load_checkpoint(run / "last.pt")
    assert last.train["epoch"] == 1 and all(torch.isfinite(v).all() for v in last.state_dict.values())
    # From scratch, a NaN in the first epoch leaves no run folder behind.
    task.bad_epoch = 0
    with pytest.raises(TrainingDivergedError, match="no checkpoint was written"):
        Trainer(
            task, LoopSettings.from_config(CFG), tmp_path / "run2", config=config_to_dict(CFG), data={"sha256": "x"}
        ).fit(train_ds, val_ds)
    assert not (tmp_path / "run2").exists()


@pytest.mark.slow
def test_ddp_two_processes_gloo(tiny_h5, tmp_path):
    torchrun = shutil.which("torchrun")
    acdctool = shutil.which("acdctool")
    if torchrun is None or acdctool is None:
        pytest.skip("torchrun or the acdctool entry point is not on PATH")
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        torchrun,
        "--standalone",
        "--nproc-per-node=2",
        "--no-python",
        acdctool,
        "train-seg",
        str(tiny_h5),
        "-o",
        str(run),
        "--fold",
        "0",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    for a in TINY_NET:
        cmd += ["--net-arg", a]
    for _attempt in range(2):
        shutil.rmtree(run, ignore_errors=True)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        # --standalone picks a free port that another job on the machine may grab first: retry that only.
        if res.returncode == 0 or not any(m in res.stderr for m in ("Address already in use", "EADDRINUSE")):
            break
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == str(run)  # only rank 0 prints its output path
    ck = load_checkpoint(run / "last.pt")
    assert ck.train["rng"]["world_size"] == 2 and len(ck.train["rng"]["ranks"]) == 2
    assert ck.train["epoch"] == 2 and len(ck.train["history"]) == 2
    assert (run / "metrics.csv").read_text().count("\n") == 3
    # Resuming the finished DDP run from one process is a no-op, not an error.
    assert stage.run(replace(CFG, batch_size=2), stage.Inputs(tiny_h5), run, resume=True).status == "up-to-date"
