"""``synth``: write synthetic ACDC-format phantoms into a new folder.

The phantoms themselves (geometry, contraction, noise, ACDC-style headers) are built by
:mod:`acdctool.data.synth`; this stage numbers the patients, writes them under ``training/``
and ``testing/`` and moves the folder into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from acdctool.config import SynthConfig
from acdctool.data.synth import group_of, make_patient, write_patient
from acdctool.errors import OutputError
from acdctool.progress import Progress, Tracker


@dataclass
class Result:
    """The folder written and its patient folders, in order."""

    out_dir: Path
    patients: list[Path] = field(default_factory=list)


def run(
    config: SynthConfig, inputs: None, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Write ``config.patients`` patients under ``output/training/`` and ``config.test_patients``
    under ``output/testing/`` (numbers continue after the training ones).

    Everything is built in a hidden temporary folder next to ``output`` and moved into place at
    the end, so an error or interrupt leaves nothing half-written.

    Args:
        config: counts, seed, frames, 4D files.
        inputs: None (synth reads nothing).
        output: the folder to create.
        force: replace an existing non-empty folder.
        progress: one event per patient written (unit ``patients``).

    Raises:
        OutputError: ``output`` exists and is not empty (without ``force``), is not a folder,
            or cannot be written.

    Example:
        >>> run(SynthConfig(patients=5), None, Path("ACDC"))  # doctest: +SKIP
    """
    out_dir = Path(output).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputError(f"{out_dir} exists and is not empty; use --force to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".synth-"))
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir}: {exc}") from exc

    splits = [("training", config.patients), ("testing", config.test_patients)]
    result = Result(out_dir)
    number = config.first_id
    try:
        tracker = Tracker(progress, config.patients + config.test_patients, "patients")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's private 0700 would otherwise become out_dir's
        for split, count in splits:
            (tmp / split).mkdir()
            for _ in range(count):
                phantom = make_patient(number, group_of(number), config)
                write_patient(phantom, tmp / split / phantom.name, write_4d=config.write_4d)
                result.patients.append(out_dir / split / phantom.name)
                tracker.advance()
                number += 1
        _move_into_place(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {out_dir}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``, replacing an existing folder; the old one is restored if
    the final rename fails and deleted only once the new one is in place."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = tmp.with_name(tmp.name + "-old")
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
