"""The trainer's interface: what a task provides, what the trainer takes, gives and calls back.

- :class:`Task`: what differs between models (build the net, its optimiser, a training step,
  validation sums and their summary); :class:`StepContext` tells a training step where it is.
- :class:`LoopSettings`: the stage-config fields the loop reads.
- :class:`Hooks`: progress callbacks and a stop request.
- :class:`TrainResult`: what :meth:`acdctool.train.loop.Trainer.fit` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from acdctool.train.state import Scheduler

__all__ = ["Task", "StepContext", "LoopSettings", "Hooks", "TrainResult"]


class Task(Protocol):
    """What a model contributes to :class:`Trainer` (see :class:`acdctool.train.tasks.SegTask`).

    Attributes:
        checkpoint_kind: ``seg-model`` or ``nvae-model`` (:mod:`acdctool.io.checkpoint`).
        model_name, model_args: stored in checkpoints; the model is rebuilt from them.
        best_metric: key of :meth:`val_summary`'s dict that picks ``best.pt``.
        best_mode: ``max`` or ``min``.
        scheduler_interval: ``epoch`` or ``step``: when the trainer calls ``scheduler.step()``.

    Optional: ``state_dict()`` / ``load_state_dict(state)`` for task-side state that must
    survive a resume (e.g. running statistics of a loss).
    """

    checkpoint_kind: str
    model_name: str
    model_args: dict[str, Any]
    best_metric: str
    best_mode: str
    scheduler_interval: str

    def build_model(self) -> torch.nn.Module: ...

    def configure_optimizer(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Scheduler]:
        """Return (optimiser, scheduler); any ``torch.optim.lr_scheduler`` is a :class:`Scheduler`."""

    def train_step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Batch (on device) → (scalar loss to backpropagate, detached scalar metrics to average)."""

    def val_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch → tensors of *sums* (fixed shapes), added over batches and ranks."""

    def val_summary(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Summed validation tensors → metrics (must include ``best_metric``)."""


@dataclass(frozen=True)
class StepContext:
    """Where a training step is: given to :meth:`Task.train_step` (KL warm-up needs ``global_step``)."""

    epoch: int  # 0-based
    step: int  # 0-based within the epoch
    global_step: int
    steps_per_epoch: int
    generator: torch.Generator  # seeded augmentation generator (CPU), part of the resume state
    device: torch.device
    note: Callable[[str], None] | None = None  # one line for the user (rank 0), e.g. a fall-back


@dataclass(frozen=True)
class LoopSettings:
    """The stage-config fields the loop reads (built with :meth:`from_config`)."""

    epochs: int
    batch_size: int
    seed: int
    device: str
    amp: bool
    workers: int
    grad_clip: float
    tensorboard: bool
    ema: float = 0.0  # decay of the weight average validated and saved as best.pt (0: none)

    @classmethod
    def from_config(cls, config: Any) -> LoopSettings:
        return cls(
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            device=config.device,
            amp=getattr(config, "amp", False),
            workers=config.workers,
            grad_clip=getattr(config, "grad_clip", 0.0),
            tensorboard=getattr(config, "tensorboard", False),
            ema=getattr(config, "ema", 0.0),
        )


@dataclass
class Hooks:
    """Callbacks, all called on rank 0 only except ``should_stop`` (called on every rank)."""

    on_epoch: Callable[[dict[str, Any]], None] | None = None  # the epoch's metrics record
    on_step: Callable[[int, int, int], None] | None = None  # (epoch, step, steps_per_epoch)
    # (epoch, steps done in it) → stop as if SIGTERM; (e, 0) is asked before epoch e starts.
    should_stop: Callable[[int, int], bool] | None = None
    on_note: Callable[[str], None] | None = None  # a one-line message for the user (e.g. a fall-back)


@dataclass
class TrainResult:
    """status: ``completed``, ``interrupted`` (``last.pt`` saved, rerun with resume) or
    ``up-to-date`` (resumed a run that had already reached ``epochs``)."""

    run_dir: Path
    status: str
    epoch: int  # completed epochs
    step: int  # steps done in the next epoch (non-zero only when interrupted)
    best_epoch: int | None
    best_value: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None  # epoch of the checkpoint resumed from
    notes: list[str] = field(default_factory=list)
    signal: int | None = None  # the signal that stopped an interrupted run (None: the stop hook)
