#!/usr/bin/env python3
"""Markdown table of a cross-validation run from its eval folders (``examples/crossval.sh``).

Usage: python scripts/crossval_table.py EVAL_DIR [--tag TAG]

Reads ``EVAL_DIR/before/summary.json`` (the gen-seg masks alone) and, for each refine row,
``EVAL_DIR/<row><TAG>/summary.json`` (eval ``--baseline``); rows whose summary is missing are
left out. Columns: Dice per slice (RV, MYO, LV, mean) and per volume (per class), invalid slices
(change), slices better / worse by more than the eval's ``--worse-threshold`` (mean Dice),
HD95 per class before → after (mm; slices where both measure a contour), and the mean absolute
error against ground truth of LV EF, RV EF (%) and MYO mass (g).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROWS = {
    "nvae": "NVAE gated",
    "nvae3": "3-gram NVAE gated",
    "nvae-none": "NVAE, `--gate none`",
    "morph": "morph (largest component + fill holes)",
}
CLASSES = ("rv", "myo", "lv")
CLINICAL = ("lv_ef", "rv_ef", "myo_mass")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    print(table(args.eval_dir, args.tag))


def table(eval_dir: Path, tag: str = "") -> str:
    """The markdown table (header, one line per row found)."""
    before = _load(eval_dir / "before")
    rows = [(label, _load(eval_dir / f"{name}{tag}")) for name, label in ROWS.items()]
    rows = [(label, s) for label, s in rows if s is not None]
    threshold = next((s["comparison"]["better_worse"]["threshold"] for _, s in rows), 0.05)
    head = [
        "",
        "RV",
        "MYO",
        "LV",
        "mean",
        "volume Dice RV / MYO / LV",
        "invalid slices",
        f"better / worse by > {threshold:g}",
        "HD95 mm RV / MYO / LV (before → after)",
        "MAE LV EF % / RV EF % / MYO mass g",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if before is not None:
        first = rows[0][1]["comparison"] if rows else None
        mae = " / ".join(_num((first or {}).get("clinical_mae", {}).get(k, {}).get("before"), 2) for k in CLINICAL)
        lines.append(
            _line(
                f"gen-seg (before), {before['slices']['n']:,} slices",
                before["slices"]["dice"],
                before["volumes"]["dice"],
                f"{before['anatomy']['invalid']:,}",
                "",
                "",
                mae if first else "",
            )
        )
    for label, s in rows:
        c = s["comparison"]
        red = c.get("invalid_reduction")
        invalid = f"{c['invalid_after']:,}" + (f" (−{100 * red:.1f}%)" if red is not None else "")
        bw = c["better_worse"]
        hd = " / ".join(f"{_num(c['hd95_mm'][k]['before'], 2)} → {_num(c['hd95_mm'][k]['after'], 2)}" for k in CLASSES)
        mae = " / ".join(_num(c["clinical_mae"].get(k, {}).get("after"), 2) for k in CLINICAL)
        lines.append(
            _line(
                label,
                s["slices"]["dice"],
                s["volumes"]["dice"],
                invalid,
                f"{bw['better']:,} / {bw['worse']:,}",
                hd,
                mae,
            )
        )
    return "\n".join(lines)


def _line(label: str, dice: dict[str, Any], volume: dict[str, Any], *cells: str) -> str:
    values = [_num(dice.get(k), 4) for k in (*CLASSES, "mean")]
    volumes = " / ".join(_num(volume.get(k), 4) for k in CLASSES)
    return "| " + " | ".join([label, *values, volumes, *cells]) + " |"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _load(folder: Path) -> dict[str, Any] | None:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


if __name__ == "__main__":
    main()
