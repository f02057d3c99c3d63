"""``acdctool make-3gram``: add previous/current/next mask context to a segmentation file."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, print_path, provenance, reporter
from acdctool.config import Masks, NgramConfig

_D = NgramConfig()


def make_3gram(
    seg: Path = typer.Argument(
        ..., metavar="SEG", help="A gen-seg (or refine) output; with --source gt, any file with ground truth."
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Output 3-gram file (.h5)."),
    source: Masks = typer.Option(Masks(_D.source), "--source", help="Masks to stack: pred (segmentations) or gt."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Add previous/next-slice mask context (3-gram).

    Stacks each slice's mask with the previous and next slice of its volume (all-background
    EOS at both ends), for the 3-gram NVAE.

    \b
    Example:
      acdctool make-3gram seg.h5 -o seg3.h5
    """
    config = make_config(NgramConfig, source=source.value)
    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import make_3gram as stage

    inputs = stage.Inputs(seg, provenance=provenance(seg))
    with reporter("make-3gram", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    log(f"wrote {result.rows} rows with 3-slice context to {output}", quiet)
    print_path(output)
