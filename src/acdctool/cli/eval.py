"""``acdctool eval``: Dice, Hausdorff, anatomical validity, clinical indices, before/after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from acdctool.cli.common import FORCE, QUIET, call, err_console, make_config, print_path, provenance, reporter
from acdctool.config import EvalConfig
from acdctool.conventions import CLASSES

_D = EvalConfig()


def eval_cmd(
    pred: Path = typer.Argument(
        ...,
        metavar="PRED",
        help="Slice file to evaluate (any stage's output), or a folder of NIfTI masks (native resolution).",
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="Report folder to create."),
    gt: Path | None = typer.Option(
        None,
        "--gt",
        metavar="FILE|DIR",
        help="Ground truth: a slice file (rows matched by patient/phase/slice), or a NIfTI folder for a PRED folder.",
    ),
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        metavar="FILE",
        help="Masks before the correction, e.g. the gen-seg file given to refine.",
    ),
    native: bool = typer.Option(
        False, "--native", help="Slice file: export its masks and evaluate at native resolution (3D, mm)."
    ),
    like: Path | None = typer.Option(
        None, "--like", metavar="ACDC_DIR", help="--native: the ACDC folder the file was prepped from."
    ),
    labels: str | None = typer.Option(
        _D.labels, "--labels", metavar="JSON|SPEC", help="NIfTI masks: label map (dataset.json or RV=1,MYO=2,LV=3)."
    ),
    gt_labels: str | None = typer.Option(
        _D.gt_labels, "--gt-labels", metavar="JSON|SPEC", help="NIfTI ground truth: label map (as --labels)."
    ),
    qc: Path | None = typer.Option(
        None, "--qc", metavar="DIR", help="QC folder of these masks (acdctool qc): score its predictions."
    ),
    threshold: float = typer.Option(
        _D.threshold,
        "--threshold",
        metavar="DICE",
        help="|Δ mean Dice| above which a row counts as improved/deteriorated.",
    ),
    worse_threshold: float = typer.Option(
        _D.worse_threshold,
        "--worse-threshold",
        metavar="DICE",
        help="With --baseline: also count slices better/worse by more than this (mean and per class).",
    ),
    top_k: int = typer.Option(_D.top_k, "--top-k", metavar="N", help="Rows shown in each montage."),
    plots: bool = typer.Option(_D.plots, "--plots/--no-plots", help="Write the PNG figures."),
    hausdorff: bool = typer.Option(_D.hausdorff, "--hausdorff/--no-hausdorff", help="Compute HD and HD95 (mm)."),
    workers: int = typer.Option(_D.workers, "--workers", metavar="N", help="Processes for the per-slice metrics."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json on stdout instead of the folder path."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Evaluate masks against ground truth.

    Dice, HD/HD95 (mm), 16 anatomical criteria and clinical indices per slice, volume and
    patient; with --baseline, the before/after comparison: slices improved/deteriorated
    (--threshold), slices better/worse by more than --worse-threshold (mean and per class),
    HD95 per class before and after (slices where both are defined), and the mean absolute
    error of the clinical indices (LV/RV EF, EDV, ESV, MYO mass) against ground truth before
    and after.

    Writes slices.csv, volumes.csv, clinical.csv, summary.json and PNG figures (with
    --baseline also comparison.csv, delta histogram, scatter and montages; with --qc
    also qc_scores.csv: AUC for slices < 0.8 and patients < 0.85, Spearman, MAE).

    The terminal table shows each mean with the number of slices or volumes it covers;
    distances cover only those where both masks hold the structure.

    At native resolution (a folder of NIfTI masks with --gt GT_DIR, or a slice file with
    --native): the ACDC challenge's metrics per ED/ES volume (Dice, HD in mm from pixdim),
    clinical indices and the 16 criteria per slice at the native spacing.

    \b
    Example:
      acdctool eval refined.h5 --baseline seg.h5 -o report/
      acdctool eval nnunet_out/ --gt ACDC/training -o report-native/
      acdctool eval refined.h5 --native --like ACDC/training -o report-n/
    """
    config = make_config(
        EvalConfig,
        threshold=threshold,
        worse_threshold=worse_threshold,
        top_k=top_k,
        plots=plots,
        hausdorff=hausdorff,
        workers=workers,
        labels=labels,
        gt_labels=gt_labels,
    )
    if not quiet:
        err_console.print(f"evaluating {pred} ...")
    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import eval as stage

    inputs = stage.Inputs(pred, gt, baseline, native, like, qc=qc, provenance=provenance(pred, gt, baseline, like, qc))
    with reporter("eval", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    if not quiet:
        print_summary(result.summary, result.overview)
    if as_json:
        print(json.dumps(json.loads((output / "summary.json").read_text()), indent=2))
    else:
        print_path(output)


def print_summary(s: dict[str, Any], overview: dict[str, Any]) -> None:
    """A concise table on stderr: Dice, HD95 and validity, and the before/after counts.

    Each cell is a mean and, in brackets, the slices or volumes it covers (``overview`` from
    :func:`acdctool.report.tables.overview`); ``-`` where no slice has the structure in both masks.
    """
    from rich.table import Table

    def cell(mean_n: tuple[float | None, int], digits: int) -> str:
        mean, n = mean_n
        return "-" if mean is None else f"{mean:.{digits}f} ({n})"

    table = Table(
        title=f"{s['source']}  ({s['slices']['n']} slices, {s['volumes']['n']} volumes)",
        title_justify="left",
        caption="(n): slices or volumes the mean covers; HD only where both masks have the structure",
        caption_justify="left",
    )
    for col in ("", *(c.upper() for c in CLASSES), "mean"):
        table.add_column(col, justify="right" if col else "left")
    d, v = overview["slices"], overview["volumes"]
    table.add_row("Dice (slice)", *(cell(d["dice"][k], 4) for k in (*CLASSES, "mean")))
    table.add_row("Dice (volume)", *(cell(v["dice"][k], 4) for k in (*CLASSES, "mean")))
    table.add_row("HD95 mm (slice)", *(cell(d["hd95_mm"][k], 2) for k in CLASSES), "")
    table.add_row("HD mm (volume)", *(cell(v["hd_mm"][k], 2) for k in CLASSES), "")
    a = s["anatomy"]
    err_console.print(table)
    for model, phases in (s.get("acdc") or {}).items():
        for phase, m in phases.items():
            err_console.print(
                f"ACDC {model} {phase} ({m['n']} volumes): Dice "
                + " ".join(f"{c.upper()} {_fmt(m['dice'][c], 3)}" for c in CLASSES)
                + ", HD mm "
                + " ".join(f"{c.upper()} {_fmt(m['hd_mm'][c], 1)}" for c in CLASSES)
            )
    err_console.print(
        f"anatomically valid: {a['valid']}/{a['valid'] + a['invalid']} slices ({100 * (a['valid_fraction'] or 0):.1f}%)"
    )
    q = s.get("qc")
    if q:
        from acdctool.qc.scoring import LEVELS

        for level, words in LEVELS.items():
            sc = q.get(level)
            if not sc:
                continue
            head = f"QC ({words}, {sc['n_bad']}/{sc['n']} below {sc['threshold']:g})"
            if "predicted" in sc:
                p = sc["predicted"]
                err_console.print(
                    f"{head}: predicted Dice AUC {p['auc']:.3f}, Spearman {p['spearman']:.3f}, MAE {p['mae']:.3f}"
                )
            elif "risk" in sc["signals"]:
                err_console.print(f"{head}: uncalibrated risk AUC {sc['signals']['risk']['auc']:.3f}")
    c = s.get("comparison")
    if c:
        print_comparison(c)


def print_comparison(c: dict[str, Any]) -> None:
    """The before/after block on stderr: counts, better/worse per class, HD95 and clinical errors."""
    from rich.table import Table

    err_console.print(
        f"vs baseline: {c['improved']} improved, {c['unchanged']} unchanged, {c['deteriorated']} deteriorated "
        f"(|Δ| > {c['threshold']}); mean Dice {c['dice_before']['mean']:.4f} → {c['dice_after']['mean']:.4f}; "
        f"invalid slices {c['invalid_before']} → {c['invalid_after']}"
    )
    bw = c.get("better_worse")
    if bw:
        per = ", ".join(f"{k.upper()} {v['better']}/{v['worse']}" for k, v in bw["per_class"].items())
        err_console.print(
            f"better/worse by > {bw['threshold']:g} Dice: {bw['better']}/{bw['worse']} of {bw['rows']} slices "
            f"(per class: {per})"
        )

    table = Table(title="before → after", title_justify="left")
    table.add_column("", justify="left")
    for col in ("before", "after", "n"):
        table.add_column(col, justify="right")
    for name, v in (c.get("hd95_mm") or {}).items():
        table.add_row(f"HD95 mm {name.upper()} (slice)", _fmt(v["before"], 2), _fmt(v["after"], 2), str(v["n"]))
    units = {"ef": "%", "edv": "mL", "esv": "mL", "mass": "g"}
    for name, v in (c.get("clinical_mae") or {}).items():
        label = name.replace("_", " ").upper().replace("MYO MASS", "MYO mass")
        table.add_row(
            f"MAE {label} {units[name.rsplit('_', 1)[1]]}", _fmt(v["before"], 2), _fmt(v["after"], 2), str(v["n"])
        )
    if table.row_count:
        err_console.print(table)
    fams = c.get("by_family")
    if fams and bw:
        err_console.print(
            f"by refine family (rows, better/worse by > {bw['threshold']:g}): "
            + ", ".join(f"{k} {v['rows']} ({v['better']}/{v['worse']})" for k, v in fams.items())
        )


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
