#!/usr/bin/env python3
"""Benchmark NVAE training: iterations/s and slices/s for the report's configuration.

Usage: python bench/train_nvae.py [--device auto|cpu|cuda] [--batch-size 8] [--steps 30]

The report's model (stem 4, scales 3, groups 4,2,1, latent 20, 128²) and loss (β 8,10,11,
KL balancing), Adamax lr 1e-2 eps 1e-3, on random one-hot masks held on the device: the cost
of the training step itself. Also prints the projected time of 100 epochs over the ACDC
training masks (1,540 slices of the train split).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch

    from acdctool.config import TrainNvaeConfig
    from acdctool.models.nvae import NVAE
    from acdctool.models.nvae_loss import NVAELoss, NVAELossConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.manual_seed(0)
    model = NVAE().to(device).train()
    loss_fn = NVAELoss(model, NVAELossConfig.from_config(TrainNvaeConfig())).to(device)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2, eps=1e-3, weight_decay=3e-4)
    labels = torch.randint(0, 4, (args.batch_size, 128, 128), device=device)
    x = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model(x), labels, i)
        loss.backward()
        opt.step()

    for i in range(3):  # warm-up (allocator, cuDNN autotune)
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t) / args.steps
    slices = args.batch_size / sec
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}")
    print(f"{1 / sec:8.2f} it/s   {slices:8.1f} slices/s")
    print(f"100 epochs over 1,540 slices: {100 * 1540 / slices / 60:8.1f} min (training steps only)")


if __name__ == "__main__":
    main()
