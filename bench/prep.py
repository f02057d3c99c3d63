#!/usr/bin/env python3
"""Benchmark `acdctool prep` on real ACDC: wall time and peak memory, against the NIfTI floor.

Usage: python bench/prep.py [ACDC_TRAINING_DIR]   (default ../shared/acdc/training)

Prints three figures: the floor (merely loading the ED/ES images and masks with nibabel, in a
fresh process), the full `acdctool prep` command (fresh process, imports included) and its
peak resident memory.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = r"""
import sys, time, glob
t = time.perf_counter()
import numpy as np, nibabel as nib
n = 0
for cfg in sorted(glob.glob(sys.argv[1] + '/patient*/Info.cfg')):
    info = dict(l.split(':', 1) for l in open(cfg) if ':' in l)
    d = cfg.rsplit('/', 1)[0]; p = d.rsplit('/', 1)[1]
    for f in (int(info['ED']), int(info['ES'])):
        for suffix in ('', '_gt'):
            np.asanyarray(nib.load(f'{d}/{p}_frame{f:02d}{suffix}.nii.gz').dataobj); n += 1
print(n, time.perf_counter() - t)
"""


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/acdc/training")
    if not root.is_dir():
        sys.exit(f"no ACDC folder at {root}")
    n_files, floor = subprocess.run(
        [sys.executable, "-c", FLOOR, str(root)], check=True, capture_output=True, text=True
    ).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "acdc.h5"
        t = time.perf_counter()
        subprocess.run(
            ["acdctool", "prep", str(root), "-o", str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL
        )
        wall = time.perf_counter() - t
        size_mb = out.stat().st_size / 2**20
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"nibabel floor : {float(floor):6.2f} s  ({n_files} NIfTI files)")
    print(f"acdctool prep : {wall:6.2f} s  ({wall / float(floor):.1f}x the floor, imports included)")
    print(f"peak memory   : {peak_mib:6.0f} MiB  (largest child process)")
    print(f"output        : {size_mb:6.1f} MiB")


if __name__ == "__main__":
    main()
