"""``acdctool prep``: ACDC folder → HDF5 slice dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, log, make_config, print_path, progress, run
from acdctool.config import PrepConfig

_D = PrepConfig()


def prep(
    acdc_dir: Path = typer.Argument(
        ..., help="ACDC root (training/, testing/), a folder of patient folders, or one patient."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output slice file (.h5)."),
    size: int = typer.Option(_D.size, "--size", help="Output in-plane size, px."),
    roi: str = typer.Option(
        _D.roi,
        "--roi",
        help="gt: square box around the ground-truth heart; center: fixed mm square at the image centre.",
    ),
    margin: float = typer.Option(
        _D.margin, "--margin", help="--roi gt: margin per side, fraction of the heart's extent."
    ),
    roi_mm: float = typer.Option(_D.roi_mm, "--roi-mm", help="--roi center: side of the crop, mm."),
    mask_interp: str = typer.Option(
        _D.mask_interp, "--mask-interp", help="smooth: per-label linear + argmax; nearest."
    ),
    val_fraction: float = typer.Option(
        _D.val_fraction, "--val-fraction", help="Share of each group of training patients in the val split."
    ),
    folds: int = typer.Option(_D.folds, "--folds", help="Number of patient-level folds for training patients."),
    seed: int = typer.Option(_D.seed, "--seed", help="Seed of the split and fold assignment."),
    skip_bad: bool = typer.Option(_D.skip_bad, "--skip-bad", help="Skip broken patients and list them at the end."),
    workers: int = typer.Option(
        _D.workers, "--workers", help="Patients processed concurrently (same output for any value)."
    ),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Preprocess an ACDC folder into an HDF5 slice file.

    ED and ES frames cut into 2D short-axis slices, cropped around the heart, resized (pixel
    spacing tracked), intensity-normalised, with patient-level stratified split and folds.

    Example: acdctool prep ACDC/training -o slices.h5 --folds 5
    """
    from acdctool.data.prep import prep_acdc
    from acdctool.io.acdc import find_patients

    config = make_config(
        PrepConfig,
        size=size,
        roi=roi,
        margin=margin,
        roi_mm=roi_mm,
        mask_interp=mask_interp,
        val_fraction=val_fraction,
        folds=folds,
        seed=seed,
        skip_bad=skip_bad,
        workers=workers,
    )
    total = len(run(find_patients, acdc_dir))
    with progress("prep", total, quiet) as advance:
        result = run(prep_acdc, acdc_dir, output, config, force=force, on_patient=advance)
    for name, reason in result.skipped:
        log(f"[yellow]skipped {name}:[/] {reason}", quiet=False)
    log(f"wrote {result.rows} slices of {result.patients} patients to {output}", quiet)
    print_path(output)
