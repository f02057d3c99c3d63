"""The run folder of a training command: checks, lock, start-over without loss, the metrics CSV.

``RUN_DIR`` holds ``last.pt``, ``best.pt``, ``metrics.csv`` and, with ``--tensorboard``, ``tb/``
(:data:`RUN_FILES`). An existing non-empty folder needs ``resume`` (continue it) or ``force``
(start over); an empty one is used as is (e.g. made by a SLURM script for its logs).

Safety:

- **One writer**: ``RUN_DIR/.lock`` (:class:`acdctool.io.locks.FolderLock`) refuses a second
  process on the same folder while the first runs; a lock left by a killed process is
  recognised as stale and taken over (with a note).
- **Start over without loss**: ``force`` moves the previous run's files into
  ``RUN_DIR/.previous-run`` and deletes them only once the new run has saved its first
  ``last.pt`` (:meth:`RunFolder.commit`). If the new run fails before that, the previous
  files are put back (:meth:`RunFolder.rollback`); if it was killed, the next command on the
  folder puts them back.
- **Inputs**: no run file may be one of the command's inputs (:func:`acdctool.io.atomic.check_overlap`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acdctool.errors import OutputError
from acdctool.io.atomic import TEMP_SUFFIX, atomic_path, check_overlap, remove_stale_temps
from acdctool.io.locks import FolderLock

__all__ = ["RUN_FILES", "BACKUP", "RunFolder", "check_run_dir", "prepare_run_dir", "write_metrics_csv"]

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "tb")
"""What a training run writes in its folder (and what ``force`` replaces)."""
BACKUP = ".previous-run"
"""Where ``force`` keeps the previous run's files until the new run's first checkpoint."""
_LOCK = ".lock"


def _content(run_dir: Path) -> list[str]:
    """Entries that make a run folder non-empty: all but the lock and temp files."""
    return [n for n in os.listdir(run_dir) if n != _LOCK and not (n.startswith(".") and n.endswith(TEMP_SUFFIX))]


def check_run_dir(run_dir: Path, resume: bool, force: bool, inputs: Iterable[Path | str | None] = ()) -> None:
    """Fail early (before loading data) when ``run_dir`` may not be used.

    An empty existing folder is fine (e.g. made by a SLURM script for its logs).

    Raises:
        OutputError: ``run_dir`` is a file, is in use by another process, is a non-empty
            folder without ``resume``/``force``, or one of its run files is an input.
    """
    run_dir = Path(run_dir)
    inputs = list(inputs)
    for name in RUN_FILES:
        check_overlap(run_dir / name, inputs)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a folder")
    if not run_dir.is_dir():
        return
    lock = FolderLock(run_dir, _LOCK)
    holder = lock.in_use()
    if holder is not None:
        raise OutputError(lock._busy_message(holder))
    if _content(run_dir) and not (resume or force):
        raise OutputError(f"{run_dir}: run folder exists (use --resume to continue it or --force to start over)")


@dataclass
class RunFolder:
    """A run folder made ready by :func:`prepare_run_dir`, locked until :meth:`release`."""

    path: Path
    resume_from: Path | None  # last.pt to continue, or None
    created: bool  # this command made the folder
    lock: FolderLock
    backup: Path | None = None  # the previous run's files, set aside by force
    notes: list[str] = field(default_factory=list)
    committed: bool = False

    def commit(self) -> None:
        """The new run saved its first checkpoint: the previous run's files may go."""
        self.committed = True
        if self.backup is not None:
            shutil.rmtree(self.backup, ignore_errors=True)
            self.backup = None

    def rollback(self) -> None:
        """The run failed before its first checkpoint: leave the folder as it was found."""
        if self.committed:
            return
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)  # we made it; leave nothing behind
        elif self.backup is not None:
            _restore(self.path, self.backup)
            self.backup = None

    def release(self) -> None:
        self.lock.release()


def _restore(run_dir: Path, backup: Path) -> None:
    """Put the files of ``backup`` back in ``run_dir`` (replacing newer ones) and remove it."""
    for name in RUN_FILES:
        new, old = run_dir / name, backup / name
        if not old.exists() and not old.is_symlink():
            continue
        if new.is_dir() and not new.is_symlink():
            shutil.rmtree(new)
        elif new.exists() or new.is_symlink():
            new.unlink()
        os.replace(old, new)
    shutil.rmtree(backup, ignore_errors=True)


def _recover(run_dir: Path) -> list[str]:
    """Deal with what a killed process left: a previous run set aside, temp files."""
    notes = []
    backup = run_dir / BACKUP
    if backup.is_dir():
        if (run_dir / "last.pt").exists():  # the forced run got as far as a checkpoint
            shutil.rmtree(backup, ignore_errors=True)
        else:
            _restore(run_dir, backup)
            notes.append(f"{run_dir}: restored the previous run that an interrupted --force run had set aside")
    for name in RUN_FILES:
        remove_stale_temps(run_dir / name)
    return notes


def prepare_run_dir(run_dir: Path, resume: bool, force: bool, inputs: Iterable[Path | str | None] = ()) -> RunFolder:
    """Make ``run_dir`` ready for a run and lock it.

    Returns:
        A :class:`RunFolder`: ``resume`` in a folder holding ``last.pt`` continues from it;
        ``force`` sets the previous run aside (kept until :meth:`RunFolder.commit`).

    Raises:
        OutputError: see :func:`check_run_dir`; the folder is locked by another process or
            cannot be created.
    """
    run_dir = Path(run_dir)
    inputs = list(inputs)
    check_run_dir(run_dir, resume, force, inputs)
    created = False
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
        created = True
    except FileExistsError:
        if not run_dir.is_dir():
            raise OutputError(f"{run_dir}: exists and is not a folder") from None
    except OSError as exc:
        raise OutputError(f"{run_dir}: cannot create run folder ({exc.strerror or exc})") from None
    lock = FolderLock(run_dir, _LOCK)
    try:
        lock.acquire()
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    folder = RunFolder(run_dir, None, created, lock)
    try:
        folder.notes += [lock.note] if lock.note else []
        folder.notes += _recover(run_dir)
        # Under the lock, look again: another process may have run meanwhile.
        if _content(run_dir) and not (resume or force):
            raise OutputError(f"{run_dir}: run folder exists (use --resume to continue it or --force to start over)")
        if resume:
            last = run_dir / "last.pt"
            folder.resume_from = last if last.is_file() else None
        elif force and any((run_dir / n).exists() or (run_dir / n).is_symlink() for n in RUN_FILES):
            backup = run_dir / BACKUP
            backup.mkdir()
            folder.backup = backup
            for name in RUN_FILES:
                if (run_dir / name).exists() or (run_dir / name).is_symlink():
                    os.replace(run_dir / name, backup / name)
    except BaseException:
        with contextlib.suppress(Exception):
            folder.rollback()
        folder.release()
        raise
    return folder


def write_metrics_csv(run_dir: Path, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``run_dir/metrics.csv`` atomically: one row per epoch record."""
    import pandas as pd

    with atomic_path(run_dir / "metrics.csv", force=True) as tmp:
        pd.DataFrame(list(history)).to_csv(tmp, index=False, float_format="%.6g")
