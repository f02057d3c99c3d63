#!/usr/bin/env python3
"""Benchmark the NVAE training step: eager against optimised, side by side in one run.

Usage: python bench/train_nvae.py [--device auto|cpu|cuda] [--batch-size 8] [--steps 20]
                                  [--rounds 3] [--models 4,12] [--bf16]

For the report's model (stem 4, scales 3, groups 4,2,1, latent 20, 128²) with 4 input channels
(a mask) and 12 (a 3-gram), and its loss (β 8,10,11, KL balancing), Adamax lr 1e-2: the
training step of ``train-nvae`` (:meth:`acdctool.train.nvae_task.NvaeTask.forward`, the loss,
backward, optimiser step) on random one-hot masks held on the device, in two variants:

- ``eager``: the step as it was before the speed-up (NCHW, no compilation, fp32);
- ``optimised``: what ``train-nvae`` runs by default (channels_last, ``torch.compile``, fp32);
- with ``--bf16``, also ``optimised+bf16`` (``--precision bf16``).

Variants alternate in ``--rounds`` rounds of ``--steps`` steps each, so a change in the
machine's load hits all of them alike; the figure is the median round. Compilation happens in
warm-up steps before timing and is reported separately. Also prints the projected wall time of
100 epochs over the ACDC train split (1,540 slices).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    import torch

    from acdctool.config import TrainNvaeConfig
    from acdctool.conventions import resolve_device
    from acdctool.data.loader import one_hot
    from acdctool.models.nvae import NVAE
    from acdctool.models.nvae_loss import NVAELoss, NVAELossConfig
    from acdctool.train.nvae_task import NvaeTask

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round and variant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="4,12", help="input channels to benchmark: 4 (mask), 12 (3-gram)")
    ap.add_argument("--bf16", action="store_true", help="also time the optimised step in bf16 autocast")
    args = ap.parse_args()
    device = resolve_device(args.device)
    rows = []
    for channels in (int(c) for c in args.models.split(",")):
        torch.manual_seed(0)
        base = NVAE(in_channels=channels)
        labels = torch.randint(0, 4, (args.batch_size, 128, 128), device=device)
        context = torch.randint(0, 4, (args.batch_size, channels // 4, 128, 128), device=device)
        target = labels
        variants: dict[str, Any] = {}
        names = ["eager", "optimised"] + (["optimised+bf16"] if args.bf16 else [])
        for name in names:
            config = TrainNvaeConfig(
                device=device.type,
                compile=name != "eager",
                precision="bf16" if name.endswith("bf16") else "fp32",
            )
            task = NvaeTask(base.args, config, steps_per_epoch=1000, val_spacing=None)  # type: ignore[arg-type]
            model = copy.deepcopy(base).to(device)
            task.loss = NVAELoss(model, NVAELossConfig.from_config(config))
            layout = torch.contiguous_format if name == "eager" else torch.channels_last
            model = model.to(memory_format=layout).train()
            opt = torch.optim.Adamax(model.parameters(), lr=1e-2, eps=1e-3, weight_decay=3e-4)
            x = one_hot(context if channels == 12 else labels).contiguous(memory_format=layout)
            variants[name] = (task, model, opt, x)

        def step(name: str, i: int, variants: dict[str, Any] = variants, target: Any = target) -> None:
            task, model, opt, x = variants[name]
            if name == "eager":
                out = model(x)
            else:
                out = task.forward(model, x, note=print)
            loss, _ = task.loss(out, target, i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        compile_s = {}
        for name in names:  # warm-up: allocator, oneDNN primitives, compilation
            t = time.perf_counter()
            for i in range(3):
                step(name, i)
            _sync(device)
            compile_s[name] = time.perf_counter() - t
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for name in names:
                _sync(device)
                t = time.perf_counter()
                for i in range(args.steps):
                    step(name, 3 + i)
                _sync(device)
                times[name].append((time.perf_counter() - t) / args.steps)
        eager = statistics.median(times["eager"])
        for name in names:
            sec = statistics.median(times[name])
            rows.append((channels, name, args.batch_size / sec, eager / sec, compile_s[name]))
    print(
        f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.rounds} rounds × {args.steps} steps per variant"
    )
    print(f"{'input':>6}  {'variant':<15} {'slices/s':>9} {'× eager':>8} {'warm-up s':>10} {'100 epochs':>11}")
    for channels, name, rate, ratio, warm in rows:
        minutes = 100 * 1540 / rate / 60
        print(f"{channels:>4}ch  {name:<15} {rate:9.1f} {ratio:8.2f} {warm:10.1f} {minutes:8.0f} min")


if __name__ == "__main__":
    main()
