"""``acdctool gen-seg``: segment every slice with trained nets, out-of-fold → a ``seg`` slice file."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, print_path, provenance, reporter
from acdctool.config import GenSegConfig
from acdctool.conventions import Device

_D = GenSegConfig()


def gen_seg(
    slices: Path = typer.Argument(
        ..., metavar="SLICES", help="Slice file from `acdctool prep` (the one the models trained on)."
    ),
    model: list[Path] = typer.Option(
        ...,
        "--model",
        "-m",
        metavar="CKPT",
        help="train-seg checkpoint (best.pt), repeatable: several archs and/or one per fold.",
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Output slice file (.h5), kind 'seg'."),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="N", help="Slices per forward pass."),
    device: Device = typer.Option(Device(_D.device), "--device", help="auto: CUDA when available."),
    amp: bool = typer.Option(_D.amp, "--amp/--no-amp", help="bf16 autocast on CUDA (never on CPU)."),
    save_probs: bool = typer.Option(
        _D.save_probs, "--save-probs", help="Also store float16 softmax 'probs' (N, 4, H, W)."
    ),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Segment every slice with each architecture, never with a net that trained on the patient.

    Fold checkpoints of one architecture act as one model: a patient of fold f is segmented
    by the fold-f net; test patients (fold -1) by the mean softmax of all its fold nets;
    patients of folds without a checkpoint are skipped. One output row per (slice, model),
    the architecture in the 'model' column; 'pred' holds the labels.

    \b
    Example:
      acdctool gen-seg slices.h5 -m unet-f0/best.pt -m unet-f1/best.pt -o seg.h5
    """
    config = make_config(GenSegConfig, batch_size=batch_size, device=device.value, amp=amp, save_probs=save_probs)
    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import gen_seg as stage

    inputs = stage.Inputs(slices, tuple(model), provenance=provenance(slices, *model))
    with reporter("gen-seg", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    for warning in result.warnings:
        log(f"[yellow]warning:[/] {warning}", quiet=False)
    for name, patients in result.skipped.items():
        log(
            f"{name}: skipped {len(patients)} patients whose fold has no checkpoint ({', '.join(patients[:5])}"
            f"{', ...' if len(patients) > 5 else ''})",
            quiet,
        )
    log(f"wrote {result.rows} rows ({', '.join(result.models)}) to {output}", quiet)
    print_path(output)
