"""The run folder of a training command: checks, (re)initialisation, and the metrics CSV.

``RUN_DIR`` holds ``last.pt``, ``best.pt``, ``metrics.csv`` and, with ``--tensorboard``, ``tb/``
(:data:`RUN_FILES`). An existing non-empty folder needs ``resume`` (continue it) or ``force``
(remove those files and start over); an empty one is used as is (e.g. made by a SLURM script
for its logs).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acdctool.errors import OutputError
from acdctool.io.atomic import atomic_path

__all__ = ["RUN_FILES", "check_run_dir", "prepare_run_dir", "write_metrics_csv"]

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "tb")
"""What a training run writes in its folder (and what ``force`` removes)."""


def check_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Fail early (before loading data) when ``run_dir`` may not be used.

    An empty existing folder is fine (e.g. made by a SLURM script for its logs).

    Raises:
        OutputError: ``run_dir`` is a file, or a non-empty folder without ``resume``/``force``.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (resume or force):
        raise OutputError(f"{run_dir}: run folder exists (use --resume to continue it or --force to start over)")


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> tuple[Path | None, bool]:
    """Make ``run_dir`` ready for a run.

    Returns:
        ``(checkpoint to resume from or None, whether the folder was created)``: ``resume``
        in a folder holding ``last.pt`` continues from it; ``force`` removes :data:`RUN_FILES`.

    Raises:
        OutputError: see :func:`check_run_dir`, or the folder cannot be created.
    """
    check_run_dir(run_dir, resume, force)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if resume:
            last = run_dir / "last.pt"
            return (last if last.is_file() else None), False
        for name in RUN_FILES:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return None, False
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{run_dir}: cannot create run folder ({exc.strerror or exc})") from None
    return None, created


def write_metrics_csv(run_dir: Path, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``run_dir/metrics.csv`` atomically: one row per epoch record."""
    import pandas as pd

    with atomic_path(run_dir / "metrics.csv", force=True) as tmp:
        pd.DataFrame(list(history)).to_csv(tmp, index=False, float_format="%.6g")
