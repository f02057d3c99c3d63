#!/usr/bin/env python3
"""Benchmark `refine`: slices/s for the morph baseline and the NVAE (report configuration).

Usage: python bench/refine.py [SEG.h5] [--nvae CKPT] [--device auto|cpu|cuda] [--batch-size N]

Without SEG.h5, one is made from ../shared/acdc/training (prep), its ground truth perturbed
so that ~1/3 of the slices are anatomically invalid (a stray blob). Without --nvae, an
untrained NVAE of the report's configuration is used (speed does not depend on the weights).
Prints slices/s per method and gate: `gate none` runs the NVAE on every slice (the cost of the
net), `gate anatomy` only on invalid slices (the cost users see).
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
    ap.add_argument("--nvae")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seg = Path(args.seg) if args.seg else _make_seg(tmp)
        ckpt = Path(args.nvae) if args.nvae else _untrained_nvae(tmp / "nvae.pt")
        _bench(seg, ckpt, args, tmp)


def _make_seg(tmp: Path) -> Path:
    from acdctool.io.slices import SliceFile, SliceWriter

    root = Path(__file__).resolve().parents[2] / "shared/acdc/training"
    prep = tmp / "acdc.h5"
    subprocess.run(["acdctool", "prep", str(root), "-o", str(prep), "-q"], check=True, stdout=subprocess.DEVNULL)
    with SliceFile(prep) as f:
        index, image, gt = f.index.copy(), f.read("image"), f.read("gt")
    pred = gt.copy()
    pred[::3, 2:6, 2:6] = 3  # a stray LV blob on every third slice: invalid anatomy
    index["model"] = "bench"
    seg = tmp / "seg.h5"
    with SliceWriter(
        seg,
        kind="seg",
        config={},
        provenance={},
        shape=gt.shape[1:],
        arrays={"image": ("float32", ()), "gt": ("uint8", ()), "pred": ("uint8", ())},
    ) as w:
        w.append(index, image=image, gt=gt, pred=pred)
    return seg


def _untrained_nvae(path: Path) -> Path:
    import torch

    from acdctool.io.checkpoint import save_checkpoint
    from acdctool.models.nvae import NVAE

    torch.manual_seed(0)
    model = NVAE()  # report configuration: stem 4, scales 3, groups (4, 2, 1), latent 20, 128²
    save_checkpoint(
        path,
        kind="nvae-model",
        model_name="nvae",
        model_args=model.args,
        state_dict=model.state_dict(),
        config={},
        data={"fold": None, "train_patients": []},  # trained on no patient: refine may use it on all
    )
    return path


def _bench(seg: Path, ckpt: Path, args, tmp: Path) -> None:
    import torch

    from acdctool.config import RefineConfig
    from acdctool.io.slices import SliceFile
    from acdctool.stages import refine

    with SliceFile(seg) as f:
        n = len(f)
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    print(f"{n} slices, device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    runs = [
        ("morph, gate anatomy", RefineConfig(method="morph", device=device), None),
        ("morph, gate none", RefineConfig(method="morph", gate="none", device=device), None),
        ("nvae, gate anatomy", RefineConfig(device=device, batch_size=args.batch_size), ckpt),
        (
            "nvae, gate anatomy, structure rule off",
            RefineConfig(device=device, batch_size=args.batch_size, min_structure_dice=0.0),
            ckpt,
        ),
        ("nvae, gate anatomy, 8 samples", RefineConfig(device=device, batch_size=args.batch_size, samples=8), ckpt),
        ("nvae, gate none", RefineConfig(device=device, gate="none", batch_size=args.batch_size), ckpt),
    ]
    for name, config, nvae in runs:
        out = tmp / "out.h5"
        t = time.perf_counter()
        result = refine.run(config, refine.Inputs(seg, nvae), out, force=True)
        sec = time.perf_counter() - t
        print(
            f"{name:38s}: {n / sec:8.1f} slices/s  ({sec:6.2f} s; invalid {result.invalid_before} → "
            f"{result.invalid_after})"
        )


if __name__ == "__main__":
    main()
