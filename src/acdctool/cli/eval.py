"""``acdctool eval``: Dice, Hausdorff, anatomical validity, clinical indices, before/after."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, err_console, make_config, print_path, run
from acdctool.config import EvalConfig

_D = EvalConfig()


def eval_cmd(
    pred: Path = typer.Argument(..., help="Slice file to evaluate (prep, gen-seg, make-3gram or refine output)."),
    output: Path = typer.Option(..., "--output", "-o", help="Report folder to create."),
    gt: Path | None = typer.Option(
        None, "--gt", help="Take ground truth from this file (rows matched by patient/phase/slice)."
    ),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Masks before the correction, e.g. the gen-seg file given to refine."
    ),
    threshold: float = typer.Option(
        _D.threshold, "--threshold", help="|Δ mean Dice| above which a row counts as improved/deteriorated."
    ),
    top_k: int = typer.Option(_D.top_k, "--top-k", help="Rows shown in each montage."),
    plots: bool = typer.Option(_D.plots, "--plots/--no-plots", help="Write the PNG figures."),
    hausdorff: bool = typer.Option(_D.hausdorff, "--hausdorff/--no-hausdorff", help="Compute HD and HD95 (mm)."),
    workers: int = typer.Option(_D.workers, "--workers", help="Processes for the per-slice metrics."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json on stdout instead of the folder path."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Evaluate masks against ground truth.

    Dice, HD/HD95 (mm), 16 anatomical criteria and clinical indices per slice, volume and
    patient; with --baseline, the before/after comparison.

    Writes slices.csv, volumes.csv, clinical.csv, summary.json and PNG figures (with
    --baseline also comparison.csv, delta histogram, scatter and montages).

    Example: acdctool eval refined.h5 --baseline seg.h5 -o report/
    """
    from acdctool.stages.evaluate import evaluate

    config = make_config(
        EvalConfig, threshold=threshold, top_k=top_k, plots=plots, hausdorff=hausdorff, workers=workers
    )
    if not quiet:
        err_console.print(f"evaluating {pred} ...")
    result = run(evaluate, pred, output, config, gt_path=gt, baseline_path=baseline, force=force)
    if not quiet:
        print_summary(result.summary)
    if as_json:
        print(json.dumps(json.loads((output / "summary.json").read_text()), indent=2))
    else:
        print_path(output)


def print_summary(s: dict) -> None:
    """A concise table on stderr: Dice, HD95 and validity, and the before/after counts."""
    from rich.table import Table

    fmt = lambda v, p=4: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    table = Table(
        title=f"{s['source']}  ({s['slices']['n']} slices, {s['volumes']['n']} volumes)", title_justify="left"
    )
    for col in ("", "RV", "MYO", "LV", "mean"):
        table.add_column(col, justify="right" if col else "left")
    d, v = s["slices"], s["volumes"]
    table.add_row("Dice (slice)", *(fmt(d["dice"][k]) for k in ("rv", "myo", "lv", "mean")))
    table.add_row("Dice (volume)", *(fmt(v["dice"].get(k)) for k in ("rv", "myo", "lv", "mean")))
    table.add_row("HD95 mm (slice)", *(fmt(d["hd95_mm"][k], 2) for k in ("rv", "myo", "lv")), "")
    table.add_row("HD mm (volume)", *(fmt(v["hd_mm"].get(k), 2) for k in ("rv", "myo", "lv")), "")
    a = s["anatomy"]
    err_console.print(table)
    err_console.print(
        f"anatomically valid: {a['valid']}/{a['valid'] + a['invalid']} slices ({100 * (a['valid_fraction'] or 0):.1f}%)"
    )
    c = s.get("comparison")
    if c:
        err_console.print(
            f"vs baseline: {c['improved']} improved, {c['unchanged']} unchanged, {c['deteriorated']} deteriorated "
            f"(|Δ| > {c['threshold']}); mean Dice {c['dice_before']['mean']:.4f} → {c['dice_after']['mean']:.4f}; "
            f"invalid slices {c['invalid_before']} → {c['invalid_after']}"
        )
