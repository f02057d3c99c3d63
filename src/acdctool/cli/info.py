"""``acdctool info``: summarise a slice file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from acdctool.cli.common import call, out_console
from acdctool.config import InfoConfig


def info(
    file: Path = typer.Argument(
        ..., metavar="FILE", help="A slice file (.h5) written by any stage, or a model file (.pt)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Summarise a slice file or a model file.

    Slice file: rows, patients per group and split, folds, arrays, config and provenance.
    Model (checkpoint, lean copy, TorchScript export): kind, architecture and arguments,
    training data and fold, crop rule, metrics and versions.

    \b
    Example:
      acdctool info slices.h5 --json | jq .patients_per_group
      acdctool info runs/unet-f0/best.pt
    """
    from acdctool.stages import info as stage

    summary = call(stage.run, InfoConfig(), stage.Inputs(file), None).summary
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    if summary.get("format") in ("checkpoint", "torchscript"):
        _print_model(summary)
    else:
        _print_summary(summary)


def _print_model(s: dict) -> None:
    from rich.table import Table

    lean = "lean" if s.get("lean") else "full, resumable"
    table = Table(title=f"{s['path']}  ({s['format']}, {s['kind']}, {lean})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    args = ", ".join(f"{k}={v}" for k, v in (s.get("args") or {}).items())
    table.add_row("model", f"{s.get('model')} ({args})")
    if s.get("parameters") is not None:
        table.add_row("parameters", f"{s['parameters']:,}")
    data = s.get("data") or {}
    fold = data.get("fold")
    table.add_row(
        "trained on", f"{data.get('path') or '?'} ({'fold ' + str(fold) if fold is not None else 'train/val'})"
    )
    if data.get("train_patients") is not None:
        table.add_row("patients", f"{data['train_patients']} train, {data.get('val_patients')} val")
    table.add_row("crop rule", s.get("crop_rule") or "not recorded")
    if s.get("epoch") is not None:
        table.add_row("epoch", str(s["epoch"]))
    metrics = {k: v for k, v in (s.get("metrics") or {}).items() if isinstance(v, (int, float))}
    if metrics:
        table.add_row("metrics", ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in (s.get("versions") or {}).items()))
    prov = s.get("provenance") or {}
    if prov:
        table.add_row("made by", f"{prov.get('command') or '?'}  ({prov.get('created', '?')}, {prov.get('host', '?')})")
    out_console.print(table)


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
