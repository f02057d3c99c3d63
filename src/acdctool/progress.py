"""The one progress convention of every stage: a callback that receives :class:`ProgressEvent`.

A stage's ``run(..., progress=None)`` takes an optional :data:`Progress` callback and calls it
with an event whenever work gets done: ``done`` of ``total`` units (patients, batches, rows,
volumes, training steps) in the current ``phase``. A new ``phase`` (e.g. the next training
epoch) starts counting from zero again. A phase that produces results (a training epoch's
validation metrics) ends with one event carrying them in ``metrics``.

The library never draws anything: the CLI turns events into a progress bar (on a terminal)
and log lines; tests and notebooks can pass any callable, or a list's ``append``.

Example:
    >>> events = []
    >>> tracker = Tracker(events.append, total=3, unit="patients")
    >>> tracker.advance(); tracker.advance(2)
    >>> [(e.done, e.total) for e in events]
    [(0, 3), (1, 3), (3, 3)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "ProgressEvent", "Tracker", "report"]


@dataclass(frozen=True)
class ProgressEvent:
    """Where a stage is.

    Attributes:
        done: units finished so far in the current phase.
        total: units in the phase, None while unknown.
        unit: what is counted (``patients``, ``batches``, ``rows``, ``volumes``, ``steps``).
        phase: the current phase (``""`` for one-phase stages, ``"epoch 3/100"`` in training);
            a new phase restarts ``done`` from 0.
        metrics: results of a phase, on the event that ends it (a training epoch's record:
            ``epoch``, ``train_loss``, ``val_dice_mean``, ..., ``time_s``, ``best``); else None.
        message: a one-line note for the user (e.g. "torch.compile failed ...; continuing
            without compilation"); such an event only carries the note: ``done``, ``total``,
            ``unit`` and ``phase`` are to be ignored.
    """

    done: int
    total: int | None = None
    unit: str = "items"
    phase: str = ""
    metrics: Mapping[str, Any] | None = None
    message: str | None = None


Progress = Callable[[ProgressEvent], None]
"""The type of every stage's ``progress`` argument."""


def report(progress: Progress | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``progress`` (nothing when None)."""
    if progress is not None:
        progress(event)


class Tracker:
    """Count units of one phase and report each advance (reports ``done=0`` when created).

    Args:
        progress: the stage's callback, or None (then nothing is reported).
        total: units in the phase, None when unknown.
        unit: what is counted.
        phase: the phase's name.
    """

    def __init__(self, progress: Progress | None, total: int | None, unit: str = "items", phase: str = "") -> None:
        self.progress, self.total, self.unit, self.phase = progress, total, unit, phase
        self.done = 0
        report(progress, ProgressEvent(0, total, unit, phase))

    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        report(self.progress, ProgressEvent(self.done, self.total, self.unit, self.phase))
