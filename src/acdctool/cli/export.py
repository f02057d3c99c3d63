"""``acdctool export``: any stage's masks back to NIfTI in the original geometry."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, log, print_path, run


def export(
    file: Path = typer.Argument(..., help="Slice file from any stage (prep, gen-seg, refine, ...)."),
    like: Path = typer.Option(..., "--like", help="The ACDC folder the file was prepped from (headers, affines)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to create for the .nii.gz masks."),
    array: str | None = typer.Option(None, "--array", help="pred or gt (default: pred when present)."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Write masks back as NIfTI volumes over the original images.

    Crop and resize are undone and the source header and affine kept, so
    patientNNN_frameYY_<name>.nii.gz opens over the original image in ITK-SNAP or 3D Slicer.

    Example: acdctool export refined.h5 --like ACDC/training -o nifti/
    """
    from acdctool.io.export import export_nifti

    if array not in (None, "pred", "gt"):
        from acdctool.cli.common import fail

        fail(f"--array must be pred or gt, got {array!r}", 2)
    result = run(export_nifti, file, like, output, array=array, force=force)
    log(f"wrote {len(result.files)} NIfTI volumes to {output}", quiet)
    print_path(output)
