"""Training throughput of ``acdctool``'s trainer vs a bare PyTorch loop, per architecture.

Both sides train the same net (same constructor arguments and seed) with the same loss
(DiceCE), optimiser (Adam 1e-3), batch size and number of steps, without augmentation; the
bare loop indexes tensors already in memory (on the device), the trainer goes through
``SliceDataset`` + DataLoader + the full loop (NaN checks, per-epoch validation and atomic
checkpoints, which are *not* timed: the trainer's ``time_s`` covers its training phase).
The first epoch is warm-up; the reported figure is the best of ``--epochs - 1`` later epochs.

Usage::

    python bench/train_seg.py                      # synthetic 128² slices, all archs, auto device
    python bench/train_seg.py --data slices.h5 --archs unet,attunet --device cuda
    OMP_NUM_THREADS=1 python bench/train_seg.py --slices 128   # a loaded CPU: one thread each

Prints one line per architecture: slices/s of each side and the ratio bare/trainer time
(target <= 1.10).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from acdctool.config import TrainSegConfig, config_to_dict
from acdctool.conventions import resolve_device
from acdctool.data.loader import SliceDataset
from acdctool.io.slices import INDEX_COLUMNS, SliceWriter
from acdctool.models.seg import ARCHS, build_seg_model, parse_net_args, resolve_args
from acdctool.train.loop import LoopSettings, Trainer
from acdctool.train.tasks import SegTask

SMALL_SWIN = ("feature_size=12",)  # SwinUNETR at the default 24 is very slow on a CPU


def synthetic_file(path: Path, n: int, size: int) -> Path:
    """n random slices (blobs + noise), one patient per 6 slices, all split 'train' fold 0."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    gt = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(0.35, 0.65) * size, rng.uniform(0.35, 0.65) * size, rng.uniform(0.08, 0.15) * size
        d = np.hypot(yy - cy, xx - cx)
        gt[i][np.hypot(yy - cy, xx - cx + 1.8 * r) < r] = 1
        gt[i][d < r * 1.3] = 2
        gt[i][d < r] = 3
    image = np.clip(np.choose(gt, [0.1, 0.5, 0.7, 0.9]) + rng.normal(0, 0.05, gt.shape), 0, 1).astype(np.float32)
    rows = []
    for i in range(n):
        row = {c: 0 for c in INDEX_COLUMNS}
        row.update(
            patient=f"patient{i // 6:03d}",
            group="NOR",
            phase="ED",
            slice=i % 6,
            n_slices=6,
            spacing_row=1.5,
            spacing_col=1.5,
            thickness=10.0,
            split="train",
            fold=0,
            model="",
        )
        rows.append(row)
    with SliceWriter(
        path,
        kind="prep",
        config={},
        provenance={},
        shape=(size, size),
        arrays={"image": ("float32", ()), "gt": ("uint8", ())},
    ) as w:
        w.append(rows, image=image, gt=gt)
    return path


def bare_loop(
    arch: str,
    args: dict,
    images: torch.Tensor,
    gt: torch.Tensor,
    batch: int,
    epochs: int,
    device: torch.device,
    seed: int,
) -> float:
    """Best epoch time (s) after the first, of a minimal loop over in-memory tensors."""
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    model = build_seg_model(arch, args).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x_all, y_all = images.to(device), gt.to(device)
    steps = len(images) // batch
    times = []
    amp = device.type == "cuda"
    for _ in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(images), device=device)
        for s in range(steps):
            idx = perm[s * batch : (s + 1) * batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x_all[idx])
            loss = loss_fn(logits.float(), y_all[idx][:, None])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def trainer_loop(
    arch: str,
    args: dict,
    data: Path,
    rows: np.ndarray,
    val_rows: np.ndarray,
    batch: int,
    epochs: int,
    device: str,
    seed: int,
) -> float:
    """Best training-phase epoch time (s) after the first, of the acdctool Trainer."""
    cfg = TrainSegConfig(arch=arch, epochs=epochs, batch_size=batch, augment=False, seed=seed, device=device)
    train_ds, val_ds = SliceDataset(data, rows), SliceDataset(data, val_rows)
    task = SegTask(arch, args, lr=cfg.lr, n_val_volumes=val_ds.n_volumes)
    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(
            task, LoopSettings.from_config(cfg), Path(tmp) / "run", config=config_to_dict(cfg), data={"sha256": "bench"}
        ).fit(train_ds, val_ds)
        del result
        import acdctool.io.checkpoint as ck

        history = ck.load_checkpoint(Path(tmp) / "run" / "last.pt").train["history"]
    return min(h["time_s"] for h in history[1:])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="prep slice file (default: synthetic)")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--slices", type=int, default=256, help="training slices per epoch")
    p.add_argument("--size", type=int, default=128, help="synthetic slice size (px)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3, help="epochs per side (first is warm-up)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--swin-args", default=";".join(SMALL_SWIN), help="';'-separated --net-arg list for swinunetr ('': defaults)"
    )
    a = p.parse_args()
    device = resolve_device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or synthetic_file(Path(tmp) / "bench.h5", a.slices + 32, a.size)
        ds = SliceDataset(data)
        rows = np.arange(min(a.slices, len(ds) - 8))
        val_rows = np.arange(len(ds) - 8, len(ds))
        images, gt = ds.__getitems__(rows)["image"], ds.__getitems__(rows)["gt"]
        print(
            f"device {device}, torch threads {torch.get_num_threads()}, {len(rows)} slices of "
            f"{tuple(images.shape[-2:])} px, batch {a.batch_size}, best of {a.epochs - 1} epochs"
        )
        for arch in a.archs.split(","):
            over = parse_net_args([s for s in a.swin_args.split(";") if s]) if arch == "swinunetr" else {}
            args = resolve_args(arch, over)
            n = (len(rows) // a.batch_size) * a.batch_size
            bare = bare_loop(arch, args, images, gt, a.batch_size, a.epochs, device, 0)
            ours = trainer_loop(arch, args, data, rows, val_rows, a.batch_size, a.epochs, a.device, 0)
            print(
                f"{arch:10s} trainer {n / ours:8.1f} slices/s   bare {n / bare:8.1f} slices/s   "
                f"ratio {ours / bare:5.3f}" + (f"   ({', '.join(f'{k}={v}' for k, v in over.items())})" if over else "")
            )


if __name__ == "__main__":
    main()
