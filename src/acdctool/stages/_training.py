"""What the two training stages (``train-seg``, ``train-nvae``) share around the trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from acdctool.errors import ConfigError
from acdctool.progress import Progress, ProgressEvent, report
from acdctool.train.interface import Hooks


def check_tensorboard(enabled: bool) -> None:
    """Fail early when ``--tensorboard`` is asked for and the optional extra is not installed.

    Raises:
        ConfigError: the tensorboard package cannot be imported.
    """
    if not enabled:
        return
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'acdctool[tensorboard]'") from None


def training_hooks(
    progress: Progress | None, epochs: int, should_stop: Callable[[int, int], bool] | None = None
) -> Hooks:
    """The trainer's hooks that turn its callbacks into :class:`acdctool.progress.ProgressEvent`.

    Each epoch is a phase ``"epoch E/EPOCHS"`` counted in optimiser ``steps``; it ends with an
    event carrying the epoch's metrics record (and ``best``: whether it made ``best.pt``).
    """
    steps: dict[str, int] = {}

    def on_step(epoch: int, step: int, n_steps: int) -> None:
        steps["n"] = n_steps
        report(progress, ProgressEvent(step, n_steps, "steps", f"epoch {epoch + 1}/{epochs}"))

    def on_epoch(record: dict[str, Any]) -> None:
        n = steps.get("n")
        phase = f"epoch {record['epoch']}/{epochs}"
        report(progress, ProgressEvent(n or 0, n, "steps", phase, metrics=record))

    def on_note(message: str) -> None:
        report(progress, ProgressEvent(0, None, "steps", message=message))

    if progress is None:
        return Hooks(should_stop=should_stop)
    return Hooks(on_epoch=on_epoch, on_step=on_step, should_stop=should_stop, on_note=on_note)
