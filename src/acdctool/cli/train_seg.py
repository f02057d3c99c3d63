"""``acdctool train-seg``: train one MONAI segmentation net (optionally one fold) into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, RESUME, TENSORBOARD, finish_training, log, make_config, progress, run
from acdctool.config import TrainSegConfig

_D = TrainSegConfig()


def train_seg(
    slices: Path = typer.Argument(..., help="Slice file from `acdctool prep` (with ground-truth masks)."),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder: best.pt, last.pt, metrics.csv (tb/)."),
    arch: str = typer.Option(_D.arch, "--arch", help="unet, resunet (2 residual units/level), attunet or swinunetr."),
    net_arg: list[str] = typer.Option(
        [], "--net-arg", help="Constructor override KEY=VALUE, repeatable (e.g. channels=8,16,32 or feature_size=12)."
    ),
    fold: int | None = typer.Option(
        _D.fold,
        "--fold",
        help=(
            "Hold out this fold: train on the other folds' train patients, validate on this fold. "
            "Default: the file's train/val split."
        ),
    ),
    epochs: int = typer.Option(_D.epochs, "--epochs", help="Total epochs (a resumed run continues up to it)."),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", help="Slices per step, per process."),
    lr: float = typer.Option(_D.lr, "--lr", help="Adam learning rate."),
    weight_decay: float = typer.Option(_D.weight_decay, "--weight-decay", help="Adam weight decay."),
    lr_schedule: str = typer.Option(_D.lr_schedule, "--lr-schedule", help="constant or cosine."),
    augment: bool = typer.Option(
        _D.augment, "--augment/--no-augment", help="Flips, small rotation/zoom, gamma/intensity."
    ),
    seed: int = typer.Option(_D.seed, "--seed", help="Seed of weights, data order and augmentation."),
    device: str = typer.Option(_D.device, "--device", help="auto, cpu or cuda."),
    amp: bool = typer.Option(_D.amp, "--amp/--no-amp", help="bf16 autocast on CUDA (never on CPU)."),
    workers: int = typer.Option(_D.workers, "--workers", help="DataLoader worker processes."),
    cache: bool = typer.Option(_D.cache, "--cache/--no-cache", help="Hold the selected slices in memory."),
    tensorboard: bool = TENSORBOARD,
    grad_clip: float = typer.Option(_D.grad_clip, "--grad-clip", help="Clip the gradient norm (0: off)."),
    resume: bool = RESUME,
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Train a segmentation net; checkpoints are written atomically every epoch.

    SIGTERM or Ctrl-C saves last.pt and exits 130: rerun the same command with --resume
    (e.g. a requeued SLURM job). A non-finite loss exits 1, keeping the last good checkpoint.
    Multi-GPU: torchrun --nproc-per-node=N --no-python acdctool train-seg ...

    Example: acdctool train-seg slices.h5 --arch attunet --fold 0 -o runs/attunet-f0
    """
    from acdctool.provenance import make_provenance
    from acdctool.train.dist import env_rank
    from acdctool.train.loop import Hooks
    from acdctool.train.tasks import train_seg as train_seg_fn

    config = make_config(
        TrainSegConfig,
        arch=arch,
        net_args=tuple(net_arg),
        fold=fold,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        augment=augment,
        seed=seed,
        device=device,
        amp=amp,
        workers=workers,
        cache=cache,
        tensorboard=tensorboard,
        grad_clip=grad_clip,
    )
    main = env_rank() == 0  # under torchrun only rank 0 talks
    quiet = quiet or not main

    def on_epoch(rec: dict) -> None:
        dice = " ".join(f"{k[9:].upper()} {rec[k]:.3f}" for k in ("val_dice_rv", "val_dice_myo", "val_dice_lv"))
        best = " (best)" if rec.get("best") else ""
        log(
            f"epoch {rec['epoch']}/{epochs}  loss {rec['train_loss']:.4f}  val loss {rec['val_loss']:.4f}  "
            f"Dice {dice}  mean {rec['val_dice_mean']:.3f}{best}  {rec['time_s']:.1f} s",
            quiet,
        )

    with progress(f"train-seg {arch}", epochs, quiet) as advance:
        hooks = Hooks(on_epoch=lambda rec: (on_epoch(rec), advance()))
        result = run(
            train_seg_fn,
            slices,
            output,
            config,
            resume=resume,
            force=force,
            hooks=hooks,
            provenance=make_provenance([slices]),
        )
    finish_training(result, output, main, quiet)
