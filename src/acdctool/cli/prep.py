"""``acdctool prep``: ACDC folder → HDF5 slice dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, print_path, provenance, reporter
from acdctool.config import MaskInterp, NonFinite, PrepConfig, Roi

_D = PrepConfig()


def prep(
    acdc_dir: Path = typer.Argument(
        ...,
        metavar="ACDC_DIR",
        help="ACDC root (training/, testing/), a folder of patient folders, one patient, or an nnU-Net raw "
        "dataset (imagesTr/, labelsTr/, imagesTs/, dataset.json).",
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Output slice file (.h5)."),
    size: int = typer.Option(_D.size, "--size", metavar="PX", help="Output in-plane size, px."),
    roi: Roi = typer.Option(
        Roi(_D.roi),
        "--roi",
        help="gt: box around the ground-truth heart; center: --roi-mm square at the image centre; heart: "
        "that square centred on the heart (predict finds it without ground truth).",
    ),
    margin: float = typer.Option(
        _D.margin, "--margin", metavar="FRACTION", help="--roi gt: margin per side, fraction of the heart's extent."
    ),
    roi_mm: float = typer.Option(_D.roi_mm, "--roi-mm", metavar="MM", help="--roi center/heart: side of the crop, mm."),
    mask_interp: MaskInterp = typer.Option(
        MaskInterp(_D.mask_interp), "--mask-interp", help="smooth: per-label linear + argmax; nearest."
    ),
    val_fraction: float = typer.Option(
        _D.val_fraction,
        "--val-fraction",
        metavar="FRACTION",
        help="Share of each group of training patients in the val split.",
    ),
    folds: int = typer.Option(
        _D.folds, "--folds", metavar="N", help="Number of patient-level folds for training patients."
    ),
    seed: int = typer.Option(_D.seed, "--seed", metavar="N", help="Seed of the split and fold assignment."),
    skip_bad: bool = typer.Option(_D.skip_bad, "--skip-bad", help="Skip broken patients and list them at the end."),
    workers: int = typer.Option(
        _D.workers, "--workers", metavar="N", help="Patients processed concurrently (same output for any value)."
    ),
    nonfinite: NonFinite = typer.Option(
        NonFinite(_D.nonfinite), "--nonfinite", help="NaN/inf voxels inside the crop: error (refuse) or zero."
    ),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Preprocess an ACDC folder into an HDF5 slice file.

    ED and ES frames cut into 2D short-axis slices, cropped around the heart, resized (pixel
    spacing tracked), intensity-normalised, with patient-level stratified split and folds.
    An nnU-Net raw dataset (imagesTr/, labelsTr/, imagesTs/, dataset.json) works too: labels
    mapped by name, patients and ED/ES from patientNNN_frameYY names and the larger LV.

    \b
    Example:
      acdctool prep ACDC/training -o slices.h5 --folds 5
      acdctool prep ACDC/training --roi heart -o heart.h5
    """
    config = make_config(
        PrepConfig,
        size=size,
        roi=roi.value,
        margin=margin,
        roi_mm=roi_mm,
        mask_interp=mask_interp.value,
        val_fraction=val_fraction,
        folds=folds,
        seed=seed,
        skip_bad=skip_bad,
        workers=workers,
        nonfinite=nonfinite.value,
    )
    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import prep as stage

    inputs = stage.Inputs(acdc_dir, provenance=provenance(acdc_dir))
    with reporter("prep", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    for name, reason in result.skipped:
        log(f"[yellow]skipped {name}:[/] {reason}", quiet=False)
    log(f"wrote {result.rows} slices of {result.patients} patients to {output}", quiet)
    print_path(output)
