"""``acdctool qc``: flag the slices and patients that need a human, without ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, print_path, provenance, reporter
from acdctool.config import PatientDice, QcConfig
from acdctool.conventions import Device

_D = QcConfig()


def qc(
    seg: Path = typer.Argument(
        ..., metavar="SEG", help="Masks to check: gen-seg, make-3gram, refine or imported output (.h5)."
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="QC folder to create."),
    nvae: list[Path] = typer.Option(
        [],
        "--nvae",
        metavar="CKPT",
        help="Single-mask NVAE checkpoint, repeatable (one per fold: each patient gets one that never saw it).",
    ),
    calibration: Path | None = typer.Option(
        None, "--calibration", metavar="FILE", help="qc-calibration file: turns the signals into a predicted Dice."
    ),
    flag_below: float = typer.Option(
        _D.flag_below, "--flag-below", metavar="DICE", help="Flag slices whose predicted Dice is below this."
    ),
    flag_patient_below: float = typer.Option(
        _D.flag_patient_below,
        "--flag-patient-below",
        metavar="DICE",
        help="Flag patients whose predicted Dice is below this.",
    ),
    patient_dice: PatientDice = typer.Option(
        PatientDice(_D.patient_dice),
        "--patient-dice",
        help="Patient Dice the flag uses: volume (3D per volume, the challenge's) or slices (their mean).",
    ),
    probs: bool = typer.Option(
        _D.use_probs, "--probs/--no-probs", help="Use the file's softmax 'probs' (entropy, margin) when present."
    ),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="N", help="Slices per NVAE pass."),
    device: Device = typer.Option(Device(_D.device), "--device", help="auto: CUDA when available."),
    workers: int = typer.Option(_D.workers, "--workers", metavar="N", help="Processes for the anatomical criteria."),
    plots: bool = typer.Option(_D.plots, "--plots/--no-plots", help="Write the figure qc_dice.png."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json on stdout instead of the folder path."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Flag the slices and patients that need a human, without ground truth.

    Per slice: anatomical validity and failed criteria, areas and their continuity
    through the volume, softmax entropy and margin (with probs), Dice with the NVAE
    reconstruction (with --nvae); per patient: ED > ES volumes. With --calibration
    they combine into a predicted Dice; without, slices are ranked by an uncalibrated
    risk score.

    Writes slices.csv, patients.csv, review.csv (worst first), flags.csv,
    summary.json and qc_dice.png.

    \b
    Example:
      acdctool qc seg.h5 --nvae f0.pt --nvae f1.pt --calibration qc.json -o qc/
      acdctool qc imported.h5 -o qc/
    """
    from acdctool.stages import qc as stage

    config = make_config(
        QcConfig,
        flag_below=flag_below,
        flag_patient_below=flag_patient_below,
        patient_dice=patient_dice.value,
        use_probs=probs,
        batch_size=batch_size,
        device=device.value,
        workers=workers,
        plots=plots,
    )
    inputs = stage.Inputs(seg, tuple(nvae), calibration, provenance=provenance(seg, *nvae, calibration))
    with reporter("qc", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    for note in result.notes:
        log(f"[yellow]note:[/] {note}", quiet)
    if not quiet:
        _print_summary(result.summary)
    if as_json:
        print(json.dumps(json.loads((output / "summary.json").read_text()), indent=2))
    else:
        print_path(output)


def _print_summary(s: dict[str, Any]) -> None:
    t = s["thresholds"]
    if s["calibrated"]:
        how = f"predicted Dice < {t['slice']:g} (patients < {t['patient']:g})"
    else:
        how = f"uncalibrated risk >= {1 - t['slice']:.2g} (patients: mean risk >= {1 - t['patient']:.2g})"
    log(
        f"{s['slices']} slices, {s['patients']} patients; signals: {', '.join(s['signals'])}; flagged "
        f"{s['flagged']['slices']} slices and {s['flagged']['patients']} patients by {how}"
    )
    scores = s.get("scores_vs_gt")
    if scores:
        from acdctool.qc.scoring import LEVELS

        for level, words in LEVELS.items():
            sc = scores.get(level)
            if sc and "predicted" in sc:
                p = sc["predicted"]
                log(
                    f"vs ground truth ({words}, {sc['n_bad']}/{sc['n']} below {sc['threshold']:g}): "
                    f"AUC {p['auc']:.3f}, Spearman {p['spearman']:.3f}, MAE {p['mae']:.3f}"
                )
