#!/usr/bin/env python3
"""Benchmark the NVAE training step of ``train-nvae``: eager against optimised, side by side.

Usage: python bench/train_nvae.py [--device auto|cpu|cuda] [--batch-size 8] [--steps 10]
                                  [--rounds 3] [--models 4,12] [--threads N] [--clock wall|cpu]
                                  [--bf16] [--no-compile-row]

For the report's model (stem 4, scales 3, groups 4,2,1, latent 20, 128²) with 4 input channels
(``input=gt``, a mask) and 12 (``context=3gram``), with the stage's default config (loss β
8,10,11 with KL balancing, Adamax 1e-2 with its warm-up/cosine schedule, grad clip 200,
augmentation on): one optimiser step exactly as the trainer takes it (``Trainer._train_epoch``):
``NvaeTask.train_step`` (augmentation, one-hot, forward, loss, divergence check), zero_grad,
backward, ``clip_grad_norm_``, the task's optimiser step and scheduler step, and the per-step
metric sums. Random masks, held on the device. Variants:

- ``eager``: the step before the speed-up (issue 13): NCHW, no compilation, no custom kernel,
  per-tensor Adamax; the reference of the ``× eager`` column;
- ``no-compile``: what ``train-nvae --no-compile`` runs (channels_last, eager, 1×1 convolutions
  as matrix products, foreach Adamax, no custom kernel);
- ``optimised``: what ``train-nvae`` runs by default (channels_last, ``torch.compile``, on CPU
  the custom kernels of ``acdctool.models.nvae_kernels``: depthwise convolution, batch norm +
  SiLU, the latent groups' draw and KL; foreach Adamax);
- with ``--bf16``, also ``optimised+bf16`` (``--precision bf16``).

After the warm-up the objects alive are frozen out of Python's garbage collector
(``gc.freeze``), as the trainer does after its first step. Variants alternate in ``--rounds``
rounds of ``--steps`` steps each, so a change in the machine's load hits all of them alike; the
figure is the median round. ``--clock cpu`` times
process CPU seconds instead of wall seconds: on a machine shared with other jobs, run with one
thread (``OMP_NUM_THREADS=1``) and the CPU clock to compare variants fairly. Compilation (and
the kernel build, the first time) happens in the warm-up steps, timed separately in wall
seconds. Also prints the projected wall time of 100 epochs over the ACDC train split (1,540
slices) at the measured rate.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

TRAIN_SLICES = 1540  # ACDC train split (80 patients), one epoch


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reference_task(base: type) -> type:
    """The task as it ran before the speed-up: NCHW model and input, eager, per-tensor Adamax."""
    import torch

    class Reference(base):  # type: ignore[misc, valid-type]
        def build_model(self) -> torch.nn.Module:
            return super().build_model().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

        def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            x, target = super()._inputs(batch)
            return x.contiguous(), target

        def forward(self, model: torch.nn.Module, x: torch.Tensor, note: Any = None) -> Any:
            return model(x)

        def configure_optimizer(self, model: torch.nn.Module) -> Any:
            opt, sched = super().configure_optimizer(model)
            for group in opt.param_groups:
                group["foreach"] = None  # torch's default: per-tensor loop on CPU
            return opt, sched

    return Reference


class Variant:
    """One way of taking the trainer's step, with its own model copy, optimiser and state."""

    def __init__(self, name: str, channels: int, batch: dict[str, Any], args: argparse.Namespace, device: Any) -> None:
        import torch

        from acdctool.config import TrainNvaeConfig
        from acdctool.train.nvae_task import NvaeTask

        self.name, self.batch, self.device = name, batch, device
        config = TrainNvaeConfig(
            context="3gram" if channels == 12 else "none",
            batch_size=args.batch_size,
            device=device.type,
            compile=name.startswith("optimised"),
            precision="bf16" if name.endswith("bf16") else "fp32",
        )
        self.config = config
        model_args = {
            "in_channels": channels,
            "out_channels": 4,
            "image_size": 128,
            "stem_channels": config.stem_channels,
            "scales": config.scales,
            "groups_per_scale": list(config.groups_per_scale),
            "latent_channels": config.latent_channels,
            "se_reduction": config.se_reduction,
        }
        cls = _reference_task(NvaeTask) if name == "eager" else NvaeTask
        self.task = cls(model_args, config, steps_per_epoch=TRAIN_SLICES // args.batch_size, val_spacing=None)
        torch.manual_seed(0)  # same initial weights in every variant
        self.model = self.task.build_model().to(device).train()
        self.opt, self.sched = self.task.configure_optimizer(self.model)
        self.generator = torch.Generator().manual_seed(0)
        self.step_count = 0
        self.notes: list[str] = []

    def step(self) -> None:
        """One training step, as ``Trainer._train_epoch`` takes it."""
        from acdctool.models import nvae_kernels

        if self.name == "no-compile":  # train-nvae --no-compile never loads the kernels
            ready, nvae_kernels._STATE.ready = nvae_kernels._STATE.ready, False
            try:
                self._step()
            finally:
                nvae_kernels._STATE.ready = ready
        else:
            self._step()

    def _step(self) -> None:
        import torch

        from acdctool.train.interface import StepContext

        n = next(iter(self.batch.values())).shape[0]
        ctx = StepContext(0, self.step_count, self.step_count, 10**6, self.generator, self.device, self.notes.append)
        loss, metrics = self.task.train_step(self.model, self.batch, ctx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.opt.step()
        self.sched.step()
        sums: dict[str, torch.Tensor] = {}
        for key, value in {"loss": loss.detach(), **metrics}.items():
            sums[key] = value.double() * n
        self.step_count += 1


def main() -> None:
    import torch

    from acdctool.conventions import resolve_device
    from acdctool.models import nvae_kernels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and variant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compilation happens here)")
    ap.add_argument("--models", default="4,12", help="input channels to benchmark: 4 (mask), 12 (3-gram)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time (loaded machine)")
    ap.add_argument("--bf16", action="store_true", help="also time the optimised step in bf16 autocast")
    ap.add_argument("--no-compile-row", action="store_true", help="also time --no-compile (channels_last eager)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = ["eager", *(["no-compile"] if args.no_compile_row else []), "optimised"]
    names += ["optimised+bf16"] if args.bf16 else []
    rows = []
    for channels in (int(c) for c in args.models.split(",")):
        g = torch.Generator().manual_seed(channels)
        gt = torch.randint(0, 4, (args.batch_size, 128, 128), generator=g)
        batch = {"gt": gt.to(device)}
        if channels == 12:
            batch["context"] = torch.randint(0, 4, (args.batch_size, 3, 128, 128), generator=g).to(device)
        variants = [Variant(name, channels, batch, args, device) for name in names]
        warm: dict[str, float] = {}
        for v in variants:  # warm-up: allocator, oneDNN primitives, kernel build, compilation
            t = time.perf_counter()
            for _ in range(args.warmup):
                v.step()
            _sync(device)
            warm[v.name] = time.perf_counter() - t
        gc.collect()  # as Trainer._freeze_gc after the first step
        gc.freeze()
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                _sync(device)
                t = clock()
                for _ in range(args.steps):
                    v.step()
                _sync(device)
                times[v.name].append((clock() - t) / args.steps)
        eager = statistics.median(times["eager"])
        for v in variants:
            sec = statistics.median(times[v.name])
            rows.append((channels, v.name, args.batch_size / sec, eager / sec, warm[v.name], v.notes))
    kernel = "loaded" if nvae_kernels.available() else "not loaded" if device.type == "cpu" else "n/a (CUDA)"
    print(
        f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, clock {args.clock}, "
        f"{args.rounds} rounds × {args.steps} steps per variant (median round), CPU kernels {kernel}"
    )
    print(f"{'input':>6}  {'variant':<15} {'slices/s':>9} {'× eager':>8} {'warm-up s':>10} {'100 epochs':>11}")
    for channels, name, rate, ratio, warm_s, notes in rows:
        minutes = 100 * TRAIN_SLICES / rate / 60
        print(f"{channels:>4}ch  {name:<15} {rate:9.1f} {ratio:8.2f} {warm_s:10.1f} {minutes:7.0f} min")
        for note in notes:
            print(f"        note: {note}")


if __name__ == "__main__":
    main()
