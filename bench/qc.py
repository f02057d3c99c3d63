#!/usr/bin/env python3
"""Benchmark `qc`: slices/s of the whole stage (signals, NVAE, tables, figure), and without NVAE.

Usage: python bench/qc.py [SEG.h5] [--prep SLICES.h5] [--nvae CKPT] [--device auto|cpu|cuda]
                          [--batch-size N] [--workers N] [--rows N] [--calibration FILE]

Without SEG.h5 one is made (in a temp folder) from a prep file (--prep, else `acdctool prep`
of ../shared/acdc/training): its ground truth eroded or given a stray blob on a third of the
slices, with softmax-like float16 probabilities (N, 4, H, W), as `gen-seg --save-probs`
writes. Without --nvae an untrained NVAE of the report's configuration is used (its speed does
not depend on the weights). Prints slices/s with and without the NVAE and the time per part;
with --calibration (one fitted without NVAE features, `qc-calibrate --features mask,probs`)
also the calibrated run without NVAE: signals, predicted Dice (hurdle model and boosted trees),
patients' volume Dice, flags.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("seg", nargs="?")
    ap.add_argument("--prep")
    ap.add_argument("--nvae")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="processes for the anatomical criteria")
    ap.add_argument("--rows", type=int, default=0, help="use only the first N rows (0: all)")
    ap.add_argument("--calibration", help="also time a calibrated run without NVAE (a calibration without nvae)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seg = Path(args.seg) if args.seg else _make_seg(tmp, args.prep, args.rows)
        ckpt = Path(args.nvae) if args.nvae else _untrained_nvae(tmp / "nvae.pt", seg)
        _bench(seg, ckpt, args, tmp)


def _make_seg(tmp: Path, prep: str | None, rows: int) -> Path:
    import numpy as np
    from scipy import ndimage

    from acdctool.io.slices import SliceFile, SliceWriter

    if prep is None:
        root = Path(__file__).resolve().parents[2] / "shared/acdc/training"
        prep = str(tmp / "acdc.h5")
        subprocess.run(["acdctool", "prep", str(root), "-o", prep, "-q"], check=True, stdout=subprocess.DEVNULL)
    with SliceFile(prep) as f:
        n = len(f) if rows <= 0 else min(rows, len(f))
        index, image, gt = f.index.iloc[:n].copy(), f.read("image", slice(0, n)), f.read("gt", slice(0, n))
    rng = np.random.default_rng(0)
    pred = gt.copy()
    for i in range(0, n, 3):
        if i % 2:
            pred[i][ndimage.binary_erosion(pred[i] > 0, iterations=2) != (pred[i] > 0)] = 0
        else:
            pred[i, 2:6, 2:6] = 3
    logits = np.eye(4, dtype=np.float32)[pred].transpose(0, 3, 1, 2) * 4
    logits += rng.normal(0, 1, logits.shape).astype(np.float32)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    index["model"] = "bench"
    seg = tmp / "seg.h5"
    arrays = {"image": ("float32", ()), "pred": ("uint8", ()), "probs": ("float16", (4,))}
    with SliceWriter(seg, kind="seg", config={}, provenance={}, shape=gt.shape[1:], arrays=arrays) as w:
        w.append(index, image=image, pred=pred, probs=probs.astype(np.float16))
    return seg


def _untrained_nvae(path: Path, seg: Path) -> Path:
    from acdctool.io.checkpoint import save_checkpoint
    from acdctool.io.slices import SliceFile
    from acdctool.models.nvae import NVAE

    with SliceFile(seg) as f:
        size = f.shape[0]
    model = NVAE(image_size=size)  # the report's configuration
    save_checkpoint(
        path,
        kind="nvae-model",
        model_name="nvae",
        model_args=model.args,
        state_dict=model.state_dict(),
        config={},
        data={"input": "gt"},
    )
    return path


def _bench(seg: Path, ckpt: Path, args: argparse.Namespace, tmp: Path) -> None:
    import torch

    from acdctool.config import QcConfig
    from acdctool.io.slices import SliceFile
    from acdctool.stages import qc

    with SliceFile(seg) as f:
        n = len(f)
    print(f"{n} slices, torch threads {torch.get_num_threads()}, batch {args.batch_size}, workers {args.workers}")
    config = QcConfig(batch_size=args.batch_size, device=args.device, workers=args.workers)
    runs = [("signals only (no NVAE)", (), None), ("with NVAE", (ckpt,), None)]
    if args.calibration:
        runs.insert(1, ("calibrated, no NVAE", (), Path(args.calibration)))
    for i, (label, nvae, cal) in enumerate(runs):
        t0, c0 = time.perf_counter(), _cpu()
        qc.run(config, qc.Inputs(seg, nvae, cal), tmp / f"qc-{i}", force=True)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        print(f"{label}: {n / wall:.1f} slices/s ({wall:.2f} s wall, {cpu:.2f} s CPU with worker processes)")


def _cpu() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
