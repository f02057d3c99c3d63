"""``acdctool export-model``: a lean copy of a checkpoint (weights, arguments, preprocessing)."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, print_path, provenance
from acdctool.config import ExportModelConfig

_D = ExportModelConfig()


def export_model(
    checkpoint: Path = typer.Argument(..., metavar="CKPT", help="train-seg or train-nvae checkpoint (best.pt)."),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="The lean model file to write."),
    slices: Path | None = typer.Option(
        None,
        "--slices",
        metavar="FILE",
        help="The prep file the model trained on: adds its crop rule to an older checkpoint.",
    ),
    torchscript: bool = typer.Option(
        _D.torchscript, "--torchscript", help="Write a traced TorchScript module instead (segmentation nets)."
    ),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Write a checkpoint without its training state, for sharing and predict.

    Keeps the weights, constructor arguments, preprocessing (crop rule, size,
    normalisation), fold, metrics and versions; drops the optimiser, scheduler and RNG
    states (it cannot be resumed). predict, gen-seg and refine take it like the original.
    --torchscript writes a traced net for torch.jit.load without acdctool, its metadata in
    the archive's extra file acdctool.json.

    \b
    Example:
      acdctool export-model runs/unet-f0/best.pt -o unet-f0.pt
    """
    from acdctool.stages import export_model as stage

    config = make_config(ExportModelConfig, torchscript=torchscript)
    inputs = stage.Inputs(checkpoint, slices, provenance=provenance(checkpoint, slices))
    result = call(stage.run, config, inputs, output, force=force)
    what = "TorchScript" if result.torchscript else "lean"
    added = "; crop rule added from " + str(slices) if result.prep_added else ""
    log(
        f"wrote {what} {result.kind} {output} ({result.bytes_out / 1e6:.2f} MB, from {result.bytes_in / 1e6:.2f} MB)"
        f"{added}",
        quiet,
    )
    print_path(output)
