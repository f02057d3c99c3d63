"""Exact resume for every model (NVAE latents and UNet dropout come from the global RNG), also in a
new process, and a larger --epochs continuing the learning-rate schedule on the new length."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from acdctool.config import TrainNvaeConfig, TrainSegConfig
from acdctool.io.checkpoint import load_checkpoint
from acdctool.stages import train_nvae, train_seg

UNET = TrainSegConfig(net_args=("channels=4,8,16", "dropout=0.2"), fold=0, epochs=2, batch_size=2, device="cpu")
NVAE = TrainNvaeConfig(
    stem_channels=4,
    scales=2,
    groups_per_scale=(1, 1),
    latent_channels=4,
    betas=(1.0, 1.0),
    warmup_steps=10,
    batch_size=2,
    epochs=2,
    fold=0,
    device="cpu",
    sr_weight=1e-2,
)
STAGES = {"unet": (train_seg, UNET), "nvae": (train_nvae, NVAE)}


def _run(name: str, slices: Path, run: Path, **kw):
    stage, config = STAGES[name]
    config = dataclasses.replace(config, **kw.pop("config", {}))
    return stage.run(config, stage.Inputs(slices), run, **kw)


def assert_same_final_state(a: Path, b: Path) -> None:
    """Every tensor of the final state_dict, the optimiser's state and the history agree bit for bit."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.state_dict.keys() == cb.state_dict.keys()
    differ = [k for k in ca.state_dict if not torch.equal(ca.state_dict[k], cb.state_dict[k])]
    assert differ == [], f"{len(differ)} of {len(ca.state_dict)} tensors differ, e.g. {differ[:3]}"
    oa, ob = ca.train["optimizer"]["state"], cb.train["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i] if torch.is_tensor(oa[i][k]))
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert strip(ca.train["history"]) == strip(cb.train["history"])


@pytest.mark.parametrize("name", ["unet", "nvae"])
def test_mid_epoch_resume_is_bit_identical(name, small, tmp_path):
    """The DataLoader drew its workers' seed from the global RNG after the state was saved."""
    full = _run(name, small, tmp_path / "full")
    part = _run(name, small, tmp_path / "part", should_stop=lambda e, s: (e, s) == (0, 2))
    assert (full.status, part.status, part.step) == ("completed", "interrupted", 2)
    assert _run(name, small, tmp_path / "part", resume=True).status == "completed"
    assert_same_final_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "nvae"])
def test_resume_in_a_new_process_is_bit_identical(rh, name, small, tmp_path):
    """What a preempted job does: the resume runs in a fresh `acdctool` process."""
    full = _run(name, small, tmp_path / "full")
    part = _run(name, small, tmp_path / "part", should_stop=lambda e, s: (e, s) == (1, 1))
    assert (full.status, part.status) == ("completed", "interrupted")
    if name == "unet":
        opts = ["train-seg", small, "--net-arg", "channels=4,8,16", "--net-arg", "dropout=0.2"]
    else:
        opts = [
            "train-nvae",
            small,
            "--stem-channels",
            4,
            "--scales",
            2,
            "--groups-per-scale",
            "1,1",
            "--latent-channels",
            4,
            "--beta",
            "1,1",
            "--warmup-steps",
            10,
            "--sr-weight",
            0.01,
        ]
    argv = rh.acdctool_cmd(
        *opts,
        "-o",
        tmp_path / "part",
        "--fold",
        0,
        "--epochs",
        2,
        "--batch-size",
        2,
        "--device",
        "cpu",
        "--resume",
        "-q",
    )
    res = subprocess.run(argv, capture_output=True, text=True, env=rh.ENV)
    assert res.returncode == 0, res.stderr
    assert_same_final_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")


def _lrs(run: Path) -> list[float]:
    return [r["lr"] for r in load_checkpoint(run / "last.pt").train["history"]]


def test_more_epochs_continue_the_cosine_on_the_new_length(small, tmp_path):
    """torch restored T_max from the checkpoint: past the old end the rate climbed back up."""
    cosine = {"lr_schedule": "cosine", "net_args": ("channels=4,8,16",), "batch_size": 8}
    _run("unet", small, tmp_path / "run", config={**cosine, "epochs": 2})
    shutil.copytree(tmp_path / "run", tmp_path / "two")
    result = _run("unet", small, tmp_path / "run", resume=True, config={**cosine, "epochs": 4})
    assert result.status == "completed" and any("schedule now spans 4 epochs" in n for n in result.notes)
    _run("unet", small, tmp_path / "ref", config={**cosine, "epochs": 4})
    # Recorded before each epoch's scheduler step: the rate of epoch e is the cosine at e - 1.
    expected = [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert _lrs(tmp_path / "run")[:2] == _lrs(tmp_path / "two")  # the first two epochs are kept
    assert _lrs(tmp_path / "run")[2:] == pytest.approx(expected[2:], rel=1e-9)
    assert _lrs(tmp_path / "run")[2:] == pytest.approx(_lrs(tmp_path / "ref")[2:], rel=1e-9)
    assert _lrs(tmp_path / "run")[3] < _lrs(tmp_path / "run")[2]  # still annealing, not climbing


def test_more_epochs_continue_the_nvae_warmup_cosine_on_the_new_length(small, tmp_path):
    """The NVAE's LambdaLR closure is rebuilt for the new length; the first step after the
    resume must use it too (not the rate the old schedule left in the optimiser)."""
    short = {"lr_warmup_steps": 3, "epochs": 1, "sr_weight": 0.0}
    _run("nvae", small, tmp_path / "run", config=short)
    result = _run("nvae", small, tmp_path / "run", resume=True, config={**short, "epochs": 3})
    assert result.status == "completed" and any("schedule now spans 3 epochs" in n for n in result.notes)
    _run("nvae", small, tmp_path / "ref", config={**short, "epochs": 3})
    assert _lrs(tmp_path / "run")[1:] == pytest.approx(_lrs(tmp_path / "ref")[1:], rel=1e-12)


def test_continue_schedule_sets_the_rate_of_the_new_length_at_once():
    from acdctool.train.state import RunState, continue_schedule, schedule_lengths

    def lambda_lr(total: int):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)

    opt, sched = lambda_lr(10)
    for _ in range(4):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt, sched = lambda_lr(20)  # what a resume with twice the epochs builds
    lengths = schedule_lengths(sched)
    opt.load_state_dict(saved_opt)
    sched.load_state_dict(saved_sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 4 / 10))  # the old schedule's rate
    run = RunState.__new__(RunState)
    run.optimizer, run.scheduler = opt, sched
    assert continue_schedule(run, lengths) == pytest.approx(0.1 * (1 - 4 / 20))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 4 / 20))
