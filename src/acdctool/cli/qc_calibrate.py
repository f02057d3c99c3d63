"""``acdctool qc-calibrate``: fit the QC combination on masks with ground truth, out of fold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from acdctool.cli.common import (
    FORCE,
    QUIET,
    call,
    err_console,
    log,
    make_config,
    parse_numbers,
    print_path,
    provenance,
    reporter,
)
from acdctool.config import QcCalibrateConfig
from acdctool.conventions import Device

_D = QcCalibrateConfig()


def qc_calibrate(
    segs: list[Path] = typer.Argument(
        ..., metavar="SEG...", help="Segmentation files with ground truth (e.g. out-of-fold gen-seg output)."
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Calibration file to write (.json)."),
    nvae: list[Path] = typer.Option(
        [], "--nvae", metavar="CKPT", help="Single-mask NVAE checkpoint, repeatable (one per fold), as for qc."
    ),
    features: str = typer.Option(
        "",
        "--features",
        metavar="G,G,...",
        help="Feature groups: mask, probs, nvae (default: all the inputs provide).",
    ),
    alpha: float = typer.Option(_D.alpha, "--alpha", metavar="A", help="Ridge penalty."),
    boost: bool = typer.Option(
        _D.boost, "--boost/--no-boost", help="Blend in boosted trees when they predict better out of fold."
    ),
    slice_threshold: float = typer.Option(
        _D.slice_threshold, "--slice-threshold", metavar="DICE", help="Bad slice below this (scores)."
    ),
    patient_threshold: float = typer.Option(
        _D.patient_threshold, "--patient-threshold", metavar="DICE", help="Bad patient below this (scores)."
    ),
    probs: bool = typer.Option(_D.use_probs, "--probs/--no-probs", help="Use the files' softmax 'probs'."),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="N", help="Slices per NVAE pass."),
    device: Device = typer.Option(Device(_D.device), "--device", help="auto: CUDA when available."),
    workers: int = typer.Option(_D.workers, "--workers", metavar="N", help="Processes for the anatomical criteria."),
    oof: Path | None = typer.Option(
        None, "--oof", metavar="FILE", help="Also write the out-of-fold predictions per slice (.csv)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the out-of-fold scores as JSON on stdout."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Fit the QC combination on masks with ground truth, out of fold.

    Computes the qc signals, keeps training patients (fold >= 0), fits a ridge +
    isotonic model of per-slice Dice grouped by patient and fold (fit on the other
    folds, predict each fold), prints the out-of-fold scores, and writes the model
    refitted on all patients. Derived from its data: never publish one fitted on data
    you may not share.

    \b
    Example:
      acdctool qc-calibrate seg.h5 --nvae f0.pt --nvae f1.pt -o qc.json
    """
    from acdctool.stages import qc_calibrate as stage

    config = make_config(
        QcCalibrateConfig,
        features=parse_numbers(features, "--features", str) if features else (),
        alpha=alpha,
        boost=boost,
        slice_threshold=slice_threshold,
        patient_threshold=patient_threshold,
        use_probs=probs,
        batch_size=batch_size,
        device=device.value,
        workers=workers,
    )
    inputs = stage.Inputs(tuple(segs), tuple(nvae), provenance=provenance(*segs, *nvae))
    with reporter("qc-calibrate", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress, oof_csv=oof)
    for note in result.notes:
        log(f"[yellow]note:[/] {note}", quiet)
    if not quiet:
        print_scores(result.scores, result.rows, result.patients, result.patient_model)
    if as_json:
        print(json.dumps(json.loads(output.read_text())["oof"], indent=2))
    else:
        print_path(output)


def print_scores(scores: dict[str, Any], rows: int, patients: int, patient_model: str) -> None:
    """Out-of-fold scores on stderr: the combination and each single signal, per level."""
    from rich.table import Table

    from acdctool.qc.scoring import LEVELS

    def f(v: float | None) -> str:
        return "-" if v is None or v != v else f"{v:.3f}"

    for level, words in LEVELS.items():
        s = scores.get(level)
        if not s:
            continue
        extra = {"patient": f"; patient model: {patient_model}", "patient_volume": f"; a line on {s.get('feature')}"}
        table = Table(
            title=f"out of fold, {s['n']} {words} ({s['n_bad']} below {s['threshold']:g})" + extra.get(level, ""),
            title_justify="left",
        )
        for col in ("score", "AUC", "Spearman", "MAE"):
            table.add_column(col, justify="left" if col == "score" else "right")
        p = s["predicted"]
        table.add_row("predicted Dice", f(p["auc"]), f(p["spearman"]), f(p["mae"]))
        for name, v in s["signals"].items():
            table.add_row(name, f(v["auc"]), f(v["spearman"]), "")
        err_console.print(table)
    log(f"fitted on {rows} slices of {patients} patients")
