"""``acdctool train-seg``: train one MONAI segmentation net (optionally one fold) into a run folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from acdctool.cli.common import (
    FORCE,
    QUIET,
    RESUME,
    TENSORBOARD,
    call,
    finish_training,
    log,
    make_config,
    provenance,
    reporter,
)
from acdctool.config import Arch, LrSchedule, TrainSegConfig
from acdctool.conventions import CLASSES, Device

_D = TrainSegConfig()


def train_seg(
    slices: Path = typer.Argument(
        ..., metavar="SLICES", help="Slice file from `acdctool prep` (with ground-truth masks)."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="RUN_DIR", help="Run folder: best.pt, last.pt, metrics.csv (tb/)."
    ),
    arch: Arch = typer.Option(
        Arch(_D.arch), "--arch", help="Network; resunet is a UNet with 2 residual units per level."
    ),
    net_arg: list[str] = typer.Option(
        [],
        "--net-arg",
        metavar="KEY=VALUE",
        help="Constructor override, repeatable (e.g. channels=8,16,32 or feature_size=12).",
    ),
    fold: int | None = typer.Option(
        _D.fold,
        "--fold",
        metavar="K",
        help=(
            "Hold out this fold: train on the other folds' train patients, validate on this fold. "
            "Default: the file's train/val split."
        ),
    ),
    epochs: int = typer.Option(
        _D.epochs, "--epochs", metavar="N", help="Total epochs (a resumed run continues up to it)."
    ),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="N", help="Slices per step, per process."),
    lr: float = typer.Option(_D.lr, "--lr", metavar="RATE", help="Adam learning rate."),
    weight_decay: float = typer.Option(_D.weight_decay, "--weight-decay", metavar="W", help="Adam weight decay."),
    lr_schedule: LrSchedule = typer.Option(
        LrSchedule(_D.lr_schedule), "--lr-schedule", help="constant, or cosine annealing to 0."
    ),
    augment: bool = typer.Option(
        _D.augment, "--augment/--no-augment", help="Flips, small rotation/zoom, gamma/intensity."
    ),
    seed: int = typer.Option(_D.seed, "--seed", metavar="N", help="Seed of weights, data order and augmentation."),
    device: Device = typer.Option(Device(_D.device), "--device", help="auto: CUDA when available."),
    amp: bool = typer.Option(_D.amp, "--amp/--no-amp", help="bf16 autocast on CUDA (never on CPU)."),
    workers: int = typer.Option(_D.workers, "--workers", metavar="N", help="DataLoader worker processes."),
    cache: bool = typer.Option(_D.cache, "--cache/--no-cache", help="Hold the selected slices in memory."),
    tensorboard: bool = TENSORBOARD,
    grad_clip: float = typer.Option(
        _D.grad_clip, "--grad-clip", metavar="NORM", help="Clip the gradient norm (0: off)."
    ),
    resume: bool = RESUME,
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Train a segmentation net; checkpoints are written atomically every epoch.

    SIGTERM, SIGHUP or Ctrl-C saves last.pt and exits 143, 129 or 130: rerun the same
    command with --resume (e.g. a requeued SLURM job). A non-finite loss exits 1, keeping
    the last good checkpoint. --force keeps the previous run until the new one has saved
    its first last.pt; a second process on the same run folder is refused.
    Multi-GPU: run it under torchrun (second example).

    \b
    Example:
      acdctool train-seg slices.h5 --arch attunet --fold 0 -o runs/attunet-f0
      torchrun --nproc-per-node=4 --no-python acdctool train-seg s.h5 -o runs/ddp
    """
    config = make_config(
        TrainSegConfig,
        arch=arch.value,
        net_args=tuple(net_arg),
        fold=fold,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule.value,
        augment=augment,
        seed=seed,
        device=device.value,
        amp=amp,
        workers=workers,
        cache=cache,
        tensorboard=tensorboard,
        grad_clip=grad_clip,
    )
    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import train_seg as stage
    from acdctool.train.dist import env_rank

    main = env_rank() == 0  # under torchrun only rank 0 talks
    quiet = quiet or not main

    def on_epoch(rec: Mapping[str, Any]) -> None:
        dice = " ".join(f"{c.upper()} {rec[f'val_dice_{c}']:.3f}" for c in CLASSES)
        best = " (best)" if rec.get("best") else ""
        log(
            f"epoch {rec['epoch']}/{epochs}  loss {rec['train_loss']:.4f}  val loss {rec['val_loss']:.4f}  "
            f"Dice {dice}  mean {rec['val_dice_mean']:.3f}{best}  {rec['time_s']:.1f} s",
        )

    inputs = stage.Inputs(slices, provenance=provenance(slices))
    with reporter(f"train-seg {config.arch}", quiet, on_epoch) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress, resume=resume)
    finish_training(result, output, main, quiet)
