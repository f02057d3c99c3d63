"""The trainer's per-run state, and its form in the ``train`` entry of a checkpoint.

:class:`RunState` bundles what one :meth:`acdctool.train.loop.Trainer.fit` call works on: the
model and its DDP wrapper, the optimiser and scheduler, the augmentation generator, and the
counters, history and running sums that a resume restores.

The ``train`` entry (:func:`train_entry`, read back by :func:`restore`):

================  ==========================================================================
key               content
================  ==========================================================================
epoch, step       completed epochs; steps done in the next one (non-zero: stopped mid-epoch)
global_step       optimiser steps so far (drives warm-ups and step-wise schedules)
optimizer         ``optimizer.state_dict()``
scheduler         ``scheduler.state_dict()``
task              the task's own state (e.g. the NVAE loss's power-iteration vectors) or None
rng               ``{"world_size": W, "ranks": [...]}``: per rank, the Python, NumPy, torch (and
                  CUDA) RNG states, the augmentation generator and the epoch's partial sums
history           one metrics record per completed epoch
best_value,       value of the task's ``best_metric`` at ``best.pt`` and its epoch
best_epoch
ema               with ``--ema``: the weight average (:class:`acdctool.train.average.WeightAverage`)
================  ==========================================================================

Checkpoints written before bf16-only mixed precision also hold ``scaler`` (the state of a
``GradScaler`` that was always disabled); :func:`restore` ignores it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from acdctool.errors import BadInputError, ConfigError
from acdctool.io.checkpoint import Checkpoint
from acdctool.train import dist
from acdctool.train.average import WeightAverage
from acdctool.train.dist import DistContext

__all__ = [
    "RESUMABLE",
    "Scheduler",
    "RunState",
    "train_entry",
    "check_resumable",
    "restore",
    "schedule_lengths",
    "continue_schedule",
]

RESUMABLE = ("epochs", "device", "workers", "tensorboard", "cache", "amp", "precision", "compile")
"""Config fields that may change on ``--resume``; any other difference is refused."""


class Scheduler(Protocol):
    """What the trainer needs of a learning-rate scheduler (any ``torch.optim.lr_scheduler``)."""

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None: ...


@dataclass
class RunState:
    """Everything one training run works on, passed whole to each step of the trainer.

    ``net`` is the module training steps call: the model itself, or its DDP wrapper; checkpoints
    and validation use ``model``.
    """

    ctx: DistContext
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    generator: torch.Generator  # seeded augmentation generator (CPU), part of the resume state
    net: torch.nn.Module = field(init=False)
    epoch: int = 0  # completed epochs
    step: int = 0  # steps done in the current epoch
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    partial: dict[str, float] = field(default_factory=dict)  # running sums of the current epoch
    average: WeightAverage | None = None  # --ema: validated and saved as best.pt

    def __post_init__(self) -> None:
        self.net = self.model


def train_entry(run: RunState, task_state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The checkpoint's ``train`` entry on rank 0, None on the other ranks.

    Every rank's RNG states and partial sums are gathered (a mid-epoch resume needs each rank's
    own), so every rank must call this.
    """
    ranks = dist.all_gather_object(run.ctx, {**dist.rng_state(run.generator, run.ctx.device), "partial": run.partial})
    if not run.ctx.is_main:
        return None
    return {
        "epoch": run.epoch,
        "step": run.step,
        "global_step": run.global_step,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "task": task_state,
        "rng": {"world_size": run.ctx.world_size, "ranks": ranks},
        "history": run.history,
        "best_value": run.best_value,
        "best_epoch": run.best_epoch,
        "ema": None if run.average is None else run.average.state_dict(),
    }


def check_resumable(path: Path, ckpt: Checkpoint, config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train`` entry of ``ckpt`` if this run (``config``, ``data``) may continue it.

    Raises:
        ConfigError: a config field outside :data:`RESUMABLE` differs.
        BadInputError: another data file (by hash), or no training state in the checkpoint.
    """
    # A field added since the checkpoint was written matches when it is at its off value.
    diffs = [
        k
        for k in set(config) | set(ckpt.config)
        if k not in RESUMABLE
        and _norm(config.get(k)) != _norm(ckpt.config.get(k))
        and not (k not in ckpt.config and config.get(k) in (None, False, 0))
    ]
    if diffs:
        shown = ", ".join(f"{k}={ckpt.config.get(k)!r} (now {config.get(k)!r})" for k in sorted(diffs))
        raise ConfigError(f"{path}: cannot resume with other settings: {shown}; use the same options or --force")
    if ckpt.data.get("sha256") != data.get("sha256"):
        raise BadInputError(
            f"{path}: was trained on another data file ({ckpt.data.get('path')}); resume with "
            f"the same file or start over with --force"
        )
    if ckpt.train is None:
        raise BadInputError(f"{path}: holds no training state to resume from")
    return dict(ckpt.train)


def restore(run: RunState, train: Mapping[str, Any], seed: int) -> list[str]:
    """Load a ``train`` entry into ``run`` (optimiser, scheduler, counters, history, RNG states).

    With another process count than the checkpoint's, a partial epoch restarts and the
    augmentation generator is reseeded from (``seed``, rank, epoch).

    Returns:
        Notes for the user (empty when the resume is exact).
    """
    ctx = run.ctx
    run.optimizer.load_state_dict(train["optimizer"])
    run.scheduler.load_state_dict(train["scheduler"])
    run.epoch, run.step, run.global_step = int(train["epoch"]), int(train["step"]), int(train["global_step"])
    run.history = list(train["history"])
    run.best_value, run.best_epoch = train.get("best_value"), train.get("best_epoch")
    if run.average is not None:
        if train.get("ema") is None:
            raise BadInputError("the checkpoint holds no weight average to resume --ema with")
        run.average.load_state_dict(train["ema"])
    rng = train["rng"]
    if int(rng["world_size"]) == ctx.world_size:
        mine = rng["ranks"][ctx.rank]
        dist.set_rng_state(mine, run.generator, ctx.device)
        run.partial = dict(mine.get("partial") or {})
        return []
    if run.step:  # the partial epoch's sums belong to another sharding: restart that epoch
        run.step, run.global_step = 0, run.global_step - run.step
    run.generator.manual_seed(seed * 1009 + ctx.rank + 7919 * run.epoch)
    return [
        f"resumed with {ctx.world_size} processes instead of {rng['world_size']}: "
        f"augmentation and data order continue, but not bit-identically"
    ]


def schedule_lengths(scheduler: Scheduler) -> dict[str, Any]:
    """The length settings of a freshly built scheduler (``T_max`` of a cosine), which
    ``load_state_dict`` would overwrite with the checkpoint's; see :func:`continue_schedule`."""
    return {k: getattr(scheduler, k) for k in ("T_max",) if hasattr(scheduler, k)}


def continue_schedule(run: RunState, lengths: Mapping[str, Any]) -> float | None:
    """After resuming with another ``--epochs``: give the schedule its new length and set the
    learning rate it prescribes at the current step.

    A cosine (``CosineAnnealingLR``) gets back the new ``T_max`` (``load_state_dict`` restored
    the old one, past which the rate would climb again); a ``LambdaLR`` keeps the closure built
    for the new length. Either way the rate becomes the closed form at the current step, so
    the run continues exactly on the curve of a run started with the new ``--epochs`` (the
    steps before the resume followed the old one).

    Returns:
        The new learning rate of the first parameter group, or None for a schedule without a
        length (e.g. constant), which is left alone.
    """
    from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR

    sched: Any = run.scheduler
    for key, value in lengths.items():
        setattr(sched, key, value)
    step = sched.last_epoch
    if isinstance(sched, CosineAnnealingLR):
        lrs = [
            sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * step / sched.T_max)) / 2
            for base in sched.base_lrs
        ]
    elif isinstance(sched, LambdaLR):
        lrs = [base * fn(step) for fn, base in zip(sched.lr_lambdas, sched.base_lrs, strict=True)]
    else:
        return None
    for group, lr in zip(run.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    sched._last_lr = list(lrs)
    return float(lrs[0])


def _norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
