"""``acdctool export``: any stage's masks back to NIfTI in the original geometry."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, print_path, reporter
from acdctool.config import ExportConfig, Masks


def export(
    file: Path = typer.Argument(..., metavar="FILE", help="Slice file from any stage (prep, gen-seg, refine, ...)."),
    like: Path | None = typer.Option(
        None,
        "--like",
        metavar="ACDC_DIR",
        help="The ACDC folder the file was prepped from (headers, affines); not needed after import-seg.",
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="Folder to create for the .nii.gz masks."),
    array: Masks | None = typer.Option(None, "--array", help="Masks to export (default: pred when present, else gt)."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Write masks back as NIfTI volumes over the original images.

    Crop and resize are undone and the source header and affine kept, so
    patientNNN_frameYY_<name>.nii.gz opens over the original image in ITK-SNAP or 3D Slicer.
    Files from import-seg (and later stages) know their source images: no --like needed,
    files are named <case>_<name>.nii.gz, and slices unchanged since import are written
    back bit-identical from the source masks.

    \b
    Example:
      acdctool export refined.h5 --like ACDC/training -o nifti/
    """
    config = make_config(ExportConfig, array=None if array is None else array.value)
    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import export as stage

    with reporter("export", quiet) as progress:
        result = call(stage.run, config, stage.Inputs(file, like), output, force=force, progress=progress)
    log(f"wrote {len(result.files)} NIfTI volumes to {output}", quiet)
    print_path(output)
