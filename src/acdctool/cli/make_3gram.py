"""``acdctool make-3gram``: add previous/current/next mask context to a segmentation file."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, log, make_config, print_path, run
from acdctool.config import NgramConfig

_D = NgramConfig()


def make_3gram(
    seg: Path = typer.Argument(..., help="A gen-seg (or refine) output; with --source gt, any file with ground truth."),
    output: Path = typer.Option(..., "--output", "-o", help="Output 3-gram file (.h5)."),
    source: str = typer.Option(_D.source, "--source", help="Masks to stack: pred (segmentations) or gt."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Add previous/next-slice mask context (3-gram).

    Stacks each slice's mask with the previous and next slice of its volume (all-background
    EOS at both ends), for the 3-gram NVAE.

    Example: acdctool make-3gram seg.h5 -o seg3.h5
    """
    from acdctool.stages.ngram import make_3gram as build

    config = make_config(NgramConfig, source=source)
    rows = run(build, seg, output, config, force=force)
    log(f"wrote {rows} rows with 3-slice context to {output}", quiet)
    print_path(output)
