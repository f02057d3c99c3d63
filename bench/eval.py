#!/usr/bin/env python3
"""Benchmark `eval`'s metrics on a slice file: slices/s for the full metric set.

Usage: python bench/eval.py [SLICES.h5] [--workers N]
       (default: prep ../shared/acdc/training into a temp file first)

Prints the time of each metric family on one core, then the full per-slice + per-volume +
clinical set as `eval` runs it (with --workers processes), and the whole `acdctool eval`
command (imports, CSVs and figures included).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.file) if args.file else _prep(Path(tmp))
        _bench(path, args.workers, Path(tmp))


def _prep(tmp: Path) -> Path:
    root = Path(__file__).resolve().parents[2] / "shared/acdc/training"
    out = tmp / "acdc.h5"
    subprocess.run(["acdctool", "prep", str(root), "-o", str(out), "-q"], check=True, stdout=subprocess.DEVNULL)
    return out


def _bench(path: Path, workers: int, tmp: Path) -> None:
    from acdctool.io.slices import SliceFile
    from acdctool.metrics import anatomy, overlap
    from acdctool.report.tables import clinical_table, slice_metrics, volume_metrics

    with SliceFile(path) as f:
        index, gt = f.index, f.read("gt")
        pred = f.read("pred") if f.has("pred") else gt
    spacing = index[["spacing_row", "spacing_col"]].to_numpy()
    n = len(index)
    timings = {}
    for name, fn in [
        ("dice", lambda: overlap.dice_batch(pred, gt)),
        ("hd + hd95 (2D)", lambda: overlap.hausdorff_batch(pred, gt, spacing)),
        ("anatomy (16 criteria)", lambda: anatomy.evaluate_batch(pred, spacing)),
        ("volumes (3D Dice + HD)", lambda: volume_metrics(index, pred, gt)),
        ("clinical indices", lambda: clinical_table(index, pred, gt)),
    ]:
        t = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - t
    for name, sec in timings.items():
        print(f"{name:24s}: {sec:6.2f} s  ({n / sec:7.0f} slices/s, 1 core)")
    t = time.perf_counter()
    slice_metrics(index, pred, gt, workers=workers)
    volume_metrics(index, pred, gt, workers=workers)
    clinical_table(index, pred, gt)
    total = time.perf_counter() - t
    print(f"{'all metrics':24s}: {total:6.2f} s  ({n / total:7.0f} slices/s, {workers} workers, {n} slices)")
    t = time.perf_counter()
    subprocess.run(
        ["acdctool", "eval", str(path), "-o", str(tmp / "report"), "-q", "--force", "--workers", str(workers)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(
        f"{'acdctool eval (CLI)':24s}: {time.perf_counter() - t:6.2f} s  (imports, CSVs, summary and figures included)"
    )


if __name__ == "__main__":
    main()
