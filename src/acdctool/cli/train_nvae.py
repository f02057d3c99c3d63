"""``acdctool train-nvae``: train the NVAE shape model on masks into a run folder."""

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
    parse_numbers,
    provenance,
    reporter,
)
from acdctool.config import Context, NvaeInput, Precision, TrainNvaeConfig
from acdctool.conventions import CLASSES, Device

_D = TrainNvaeConfig()
_BETAS = ",".join(f"{b:g}" for b in _D.betas)


def train_nvae(
    data: Path = typer.Argument(
        ...,
        metavar="DATA",
        help="prep file (--input gt), gen-seg file (--input seg) or make-3gram file (--context 3gram).",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="RUN_DIR", help="Run folder: best.pt, last.pt, metrics.csv (tb/)."
    ),
    input: NvaeInput = typer.Option(
        NvaeInput(_D.input), "--input", help="gt: auto-encode ground truth; seg: gen-seg masks in, ground truth out."
    ),
    context: Context = typer.Option(
        Context(_D.context), "--context", help="none, or 3gram (previous/current/next masks in)."
    ),
    stem_channels: int = typer.Option(
        _D.stem_channels, "--stem-channels", metavar="N", help="Channels after the stem conv."
    ),
    scales: int = typer.Option(_D.scales, "--scales", metavar="N", help="Latent scales."),
    groups_per_scale: str = typer.Option(
        ",".join(map(str, _D.groups_per_scale)),
        "--groups-per-scale",
        metavar="N,N,...",
        help="Latent groups per scale, top first (e.g. 4,2,1).",
    ),
    latent_channels: int = typer.Option(
        _D.latent_channels, "--latent-channels", metavar="N", help="Channels of each latent group."
    ),
    se_reduction: int = typer.Option(
        _D.se_reduction, "--se-reduction", metavar="N", help="Squeeze-excitation channel reduction factor."
    ),
    beta: str = typer.Option(
        _BETAS,
        "--beta",
        metavar="B,B,...",
        help="KL weight per scale, top first (e.g. 8,10,11).",
    ),
    warmup_steps: int = typer.Option(
        _D.warmup_steps, "--warmup-steps", metavar="N", help="KL warm-up, optimiser steps."
    ),
    kl_balance: bool = typer.Option(
        _D.kl_balance, "--kl-balance/--no-kl-balance", help="Balance KL across groups during warm-up."
    ),
    dice_weight: float = typer.Option(
        _D.dice_weight, "--dice-weight", metavar="W", help="Weight of a soft-Dice reconstruction term."
    ),
    sr_weight: float = typer.Option(
        _D.sr_weight, "--sr-weight", metavar="W", help="Spectral regularisation weight (0: off)."
    ),
    fold: int | None = typer.Option(
        _D.fold, "--fold", metavar="K", help="Hold out this fold for validation (default: the file's train/val split)."
    ),
    epochs: int = typer.Option(
        _D.epochs, "--epochs", metavar="N", help="Total epochs (a resumed run continues up to it)."
    ),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="N", help="Slices per step, per process."),
    lr: float = typer.Option(_D.lr, "--lr", metavar="RATE", help="Adamax learning rate (after warm-up)."),
    lr_min: float = typer.Option(_D.lr_min, "--lr-min", metavar="RATE", help="Learning rate at the end of the cosine."),
    lr_warmup_steps: int = typer.Option(
        _D.lr_warmup_steps, "--lr-warmup-steps", metavar="N", help="Linear learning-rate warm-up steps."
    ),
    weight_decay: float = typer.Option(_D.weight_decay, "--weight-decay", metavar="W", help="Adamax weight decay."),
    augment: bool = typer.Option(_D.augment, "--augment/--no-augment", help="Small rotations and zooms of the masks."),
    seed: int = typer.Option(
        _D.seed, "--seed", metavar="N", help="Seed of weights, data order, augmentation, latents."
    ),
    device: Device = typer.Option(Device(_D.device), "--device", help="auto: CUDA when available."),
    precision: Precision = typer.Option(
        Precision(_D.precision), "--precision", help="fp32, or bf16 autocast of the forward pass (CPU and CUDA)."
    ),
    compile: bool = typer.Option(
        _D.compile,
        "--compile/--no-compile",
        help="torch.compile the training step (minutes once, then faster; falls back to eager on failure); "
        "on CPU also builds and uses the NVAE's C++ kernels (needs a C++ compiler and ninja, else torch's ops).",
    ),
    workers: int = typer.Option(_D.workers, "--workers", metavar="N", help="DataLoader worker processes."),
    tensorboard: bool = TENSORBOARD,
    grad_clip: float = typer.Option(
        _D.grad_clip, "--grad-clip", metavar="NORM", help="Clip the gradient norm (0: off)."
    ),
    ema: float = typer.Option(
        _D.ema,
        "--ema",
        metavar="DECAY",
        help="Validate and save as best.pt a moving average of the weights with this decay per step "
        "(e.g. 0.999; 0: off).",
    ),
    resume: bool = RESUME,
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Train the NVAE shape model on masks.

    Logs reconstruction loss, KL per scale, Dice per class and anatomical validity of the
    validation reconstructions every epoch. A NaN or exploding KL stops training with a
    message naming the term, keeping the last good checkpoint. SIGTERM saves last.pt and
    exits 143 (Ctrl-C: 130): rerun with --resume.

    \b
    Example:
      acdctool train-nvae slices.h5 --input gt --beta 8,10,11 -o runs/nvae-gt
    """
    groups = parse_numbers(groups_per_scale, "--groups-per-scale", int)
    config = make_config(
        TrainNvaeConfig,
        input=input.value,
        context=context.value,
        stem_channels=stem_channels,
        scales=scales,
        groups_per_scale=groups,
        latent_channels=latent_channels,
        se_reduction=se_reduction,
        betas=parse_numbers(beta, "--beta"),
        warmup_steps=warmup_steps,
        kl_balance=kl_balance,
        dice_weight=dice_weight,
        sr_weight=sr_weight,
        fold=fold,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_min=lr_min,
        lr_warmup_steps=lr_warmup_steps,
        weight_decay=weight_decay,
        augment=augment,
        seed=seed,
        device=device.value,
        precision=precision.value,
        compile=compile,
        workers=workers,
        tensorboard=tensorboard,
        grad_clip=grad_clip,
        ema=ema,
    )
    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import train_nvae as stage
    from acdctool.train.dist import env_rank

    main = env_rank() == 0
    quiet = quiet or not main

    def on_epoch(rec: Mapping[str, Any]) -> None:
        dice = " ".join(f"{c.upper()} {rec[f'val_dice_{c}']:.3f}" for c in CLASSES)
        vdice = "/".join(f"{rec[f'val_vdice_{c}']:.3f}" for c in CLASSES if f"val_vdice_{c}" in rec)
        kl = " ".join(f"{rec[k]:.1f}" for k in sorted(rec) if k.startswith("val_kl_scale"))
        best = " (best)" if rec.get("best") else ""
        log(
            f"epoch {rec['epoch']}/{epochs}  recon {rec['val_recon']:.1f}  KL/scale {kl}  Dice {dice}"
            f"{f' (per volume {vdice})' if vdice else ''}  valid {100 * rec['val_valid_fraction']:.1f}%{best}  "
            f"{rec['time_s']:.1f} s",
        )

    inputs = stage.Inputs(data, provenance=provenance(data))
    with reporter("train-nvae", quiet, on_epoch) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress, resume=resume)
    finish_training(result, output, main, quiet)
