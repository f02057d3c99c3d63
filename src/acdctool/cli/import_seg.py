"""``acdctool import-seg``: masks made by another tool (NIfTI) → a ``seg`` slice file."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, print_path, provenance, reporter
from acdctool.config import ImportRoi, ImportSegConfig, MaskInterp

_D = ImportSegConfig()


def import_seg(
    preds: Path | None = typer.Argument(
        None, metavar="PRED_DIR", help="Folder of predicted masks (nnU-Net CASE.nii.gz or ACDC names)."
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Output slice file (.h5), kind 'seg'."),
    images: Path | None = typer.Option(
        None, "--images", metavar="DIR", help="Folder of the images (CASE_0000.nii.gz or patientNNN_frameYY.nii.gz)."
    ),
    gt: Path | None = typer.Option(None, "--gt", metavar="DIR", help="Folder of ground-truth masks (optional)."),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        metavar="CSV",
        help="Instead of folders: columns image, prediction, [gt, case, patient, phase, frame, group, model].",
    ),
    labels: str | None = typer.Option(
        _D.labels,
        "--labels",
        metavar="JSON|SPEC",
        help="Label map of the predictions: a dataset.json, or RV=1,MYO=2,LV=3 (default: dataset.json beside them).",
    ),
    gt_labels: str | None = typer.Option(
        _D.gt_labels, "--gt-labels", metavar="JSON|SPEC", help="Label map of the ground truth (as --labels)."
    ),
    roi: ImportRoi = typer.Option(
        ImportRoi(_D.roi),
        "--roi",
        help="pred: prep's gt box around the predicted heart; heart: --roi-mm square on it; center.",
    ),
    margin: float = typer.Option(
        _D.margin, "--margin", metavar="FRACTION", help="--roi pred: margin per side, fraction of the heart's extent."
    ),
    roi_mm: float = typer.Option(_D.roi_mm, "--roi-mm", metavar="MM", help="--roi heart/center: side of the crop, mm."),
    size: int = typer.Option(_D.size, "--size", metavar="PX", help="Output in-plane size, px."),
    mask_interp: MaskInterp = typer.Option(
        MaskInterp(_D.mask_interp), "--mask-interp", help="smooth: per-label linear + argmax; nearest."
    ),
    model: str = typer.Option(
        _D.model, "--model-name", metavar="NAME", help="Model name of masks whose file names carry none."
    ),
    allow_missing: bool = typer.Option(
        _D.allow_missing, "--allow-missing", help="Skip images without a prediction instead of failing."
    ),
    workers: int = typer.Option(_D.workers, "--workers", metavar="N", help="Patients processed concurrently."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Import predicted NIfTI masks (nnU-Net, MONAI, your own net) into a slice file.

    Masks are matched with their images by name (nnU-Net CASE_0000/CASE, ACDC
    patientNNN_frameYY[_SUFFIX]) or listed in a CSV manifest, checked (same shape and
    affine as the image, labels in the label map), cropped around the predicted heart and
    resized as prep does. ED/ES: Info.cfg, the manifest, else the larger LV is ED. eval,
    make-3gram, refine and export work on the output; export writes unchanged slices back
    bit-identical.

    \b
    Example:
      acdctool import-seg nnunet_out/ --images imagesTs/ --gt labelsTs/ -o seg.h5
      acdctool refine seg.h5 --nvae nvae.pt -o refined.h5
    """
    from acdctool.stages import import_seg as stage

    config = make_config(
        ImportSegConfig,
        roi=roi.value,
        margin=margin,
        roi_mm=roi_mm,
        size=size,
        mask_interp=mask_interp.value,
        labels=labels,
        gt_labels=gt_labels,
        model=model,
        allow_missing=allow_missing,
        workers=workers,
    )
    inputs = stage.Inputs(preds, images, gt, manifest, provenance=provenance(preds, images, gt, manifest))
    with reporter("import-seg", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    for note in result.notes:
        log(f"[yellow]note:[/] {note}", quiet)
    phases = ", ".join(f"{k} {v}" for k, v in sorted(result.phase_from.items()))
    log(
        f"wrote {result.rows} slices of {result.cases} volumes, {result.patients} patients "
        f"({', '.join(result.models)}) to {output}; labels: {result.label_map}; ED/ES from: {phases}",
        quiet,
    )
    print_path(output)
