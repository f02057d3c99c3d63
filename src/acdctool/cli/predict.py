"""``acdctool predict``: raw NIfTI images → masks in their original geometry, clinical indices."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, fail, log, make_config, print_path, provenance, reporter
from acdctool.config import Choose, PredictConfig
from acdctool.conventions import Device
from acdctool.errors import EX_USAGE

_D = PredictConfig()


def predict(
    images: Path = typer.Argument(
        ..., metavar="IMAGES", help="Folder of NIfTI images (3D frames, 4D cines), or one file."
    ),
    model: list[Path] = typer.Option(
        ...,
        "--model",
        "-m",
        metavar="CKPT",
        help="Segmentation checkpoint (full or lean), repeatable: one arch, e.g. one per fold.",
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="Folder to create for masks and CSVs."),
    nvae: list[Path] = typer.Option(
        [], "--nvae", metavar="CKPT", help="NVAE checkpoint for the anatomy-gated correction, repeatable."
    ),
    frames: str = typer.Option(
        "all", "--frames", metavar="F,F,...|all", help="4D cines: 1-based frames to segment (e.g. 1,12), or all."
    ),
    tta: bool = typer.Option(_D.tta, "--tta/--no-tta", help="Average over the 4 flips of each slice."),
    passes: int = typer.Option(
        _D.passes, "--passes", metavar="N", help="--roi heart models: most passes while re-centring the crop."
    ),
    choose: Choose = typer.Option(
        Choose(_D.choose),
        "--choose",
        help="Gate: rank valid corrections by Dice with the mask, or by agreement with the ensemble's softmax.",
    ),
    min_agreement: float = typer.Option(
        _D.min_agreement, "--min-agreement", metavar="SCORE", help="Gate: least --choose score (0..1) of a correction."
    ),
    labels: str | None = typer.Option(
        _D.labels, "--labels", metavar="JSON|SPEC", help="Label values to write, e.g. LV=1,MYO=2,RV=3 (default ACDC)."
    ),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="N", help="Slices per forward pass."),
    device: Device = typer.Option(Device(_D.device), "--device", help="auto: CUDA when available."),
    amp: bool = typer.Option(_D.amp, "--amp/--no-amp", help="bf16 autocast on CUDA (never on CPU)."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Segment raw cardiac MRI (no Info.cfg, no ground truth needed).

    Crops each patient as the nets were trained (--roi heart nets find the heart
    themselves, --roi center nets take the image centre; --roi gt nets are refused),
    averages the softmax of every checkpoint and flip, optionally corrects anatomically
    invalid slices with the NVAE, and writes <case>.nii.gz over each image (its header and
    affine), volumes.csv (per frame), clinical.csv (per patient: EDV, ESV, EF, mass,
    validity) and predict.json. ED/ES: Info.cfg when present, else the largest and
    smallest predicted LV.

    \b
    Example:
      acdctool predict scans/ -m unet-f0.pt -m unet-f1.pt -o masks/
      acdctool predict patient090_4d.nii.gz -m unet-f0.pt --frames 1,12 -o p90/
    """
    from acdctool.stages import predict as stage

    chosen: tuple[int, ...] = ()
    if frames.strip().lower() != "all":
        try:
            chosen = tuple(int(f) for f in frames.split(",") if f.strip())
        except ValueError:
            fail(f"--frames takes comma-separated frame numbers or 'all', got {frames!r}", EX_USAGE)
    config = make_config(
        PredictConfig,
        frames=chosen,
        tta=tta,
        passes=passes,
        choose=choose.value,
        min_agreement=min_agreement,
        labels=labels,
        batch_size=batch_size,
        device=device.value,
        amp=amp,
    )
    inputs = stage.Inputs(images, tuple(model), tuple(nvae), provenance=provenance(images, *model, *nvae))
    with reporter("predict", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    for note in result.notes:
        log(f"[yellow]note:[/] {note}", quiet)
    table = result.clinical
    valid = 1 - table.invalid_slices.sum() / max(int(table.slices.sum()), 1) if len(table) else 0.0
    log(
        f"wrote {len(result.files)} masks of {len(table)} patients to {output} "
        f"({100 * valid:.1f}% of slices anatomically valid)",
        quiet,
    )
    print_path(output)
