"""``acdctool info``: summarise a slice file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from acdctool.cli.common import call, out_console
from acdctool.config import InfoConfig


def info(
    file: Path = typer.Argument(..., metavar="FILE", help="A slice file (.h5) written by any stage."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Summarise a slice file.

    Rows, patients per group and split, folds, arrays, config and provenance.

    \b
    Example:
      acdctool info slices.h5 --json | jq .patients_per_group
    """
    from acdctool.stages import info as stage

    summary = call(stage.run, InfoConfig(), stage.Inputs(file), None).summary
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.table import Table

    table = Table(
        title=f"{s['path']}  ({s['kind']}, schema v{s['schema_version']}, acdctool {s['tool_version']})",
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column()
    fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "-"  # noqa: E731
    spacing = s["spacing_mm"]
    table.add_row("rows", f"{s['rows']} slices of {s['shape'][0]}×{s['shape'][1]} px")
    table.add_row("patients", f"{s['patients']} ({s['volumes']} volumes)")
    table.add_row("per group", fmt(s["patients_per_group"]))
    table.add_row("per split", fmt(s["patients_per_split"]) + f"  (rows: {fmt(s['rows_per_split'])})")
    table.add_row("folds", fmt(s["folds"]))
    if s["models"]:
        table.add_row("models", ", ".join(s["models"]))
    if s["empty_gt_slices"] is not None:
        table.add_row("empty gt slices", str(s["empty_gt_slices"]))
    if spacing["min"] is not None:
        table.add_row("pixel spacing", f"{spacing['min']:.3f}–{spacing['max']:.3f} mm")
    table.add_row("arrays", "; ".join(f"{k} {v['dtype']} {tuple(v['shape'])}" for k, v in s["arrays"].items()))
    table.add_row("config", json.dumps({k: v for k, v in s["config"].items() if k != "_config"}))
    prov = s["provenance"]
    table.add_row("made by", f"{prov.get('command') or '?'}  ({prov.get('created', '?')}, {prov.get('host', '?')})")
    table.add_row("inputs", ", ".join(prov.get("inputs", [])) or "-")
    out_console.print(table)
