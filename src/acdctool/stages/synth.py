"""``synth``: write synthetic ACDC-format phantoms into a new folder.

The phantoms themselves (geometry, contraction, noise, ACDC-style headers) are built by
:mod:`acdctool.data.synth`; this stage numbers the patients, writes them under ``training/``
and ``testing/`` and moves the folder into place only when complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from acdctool.config import SynthConfig
from acdctool.data.synth import group_of, make_patient, write_patient
from acdctool.errors import OutputError
from acdctool.io.atomic import atomic_dir
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
    the end (:func:`acdctool.io.atomic.atomic_dir`), so an error or interrupt leaves nothing
    half-written.

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
    empty = out_dir.is_dir() and not any(out_dir.iterdir())
    if out_dir.is_dir() and not empty and not force:
        raise OutputError(f"{out_dir} exists and is not empty; use --force to replace it")
    splits = [("training", config.patients), ("testing", config.test_patients)]
    result = Result(out_dir)
    number = config.first_id
    tracker = Tracker(progress, config.patients + config.test_patients, "patients")
    try:
        with atomic_dir(out_dir, force=force or empty) as tmp:
            for split, count in splits:
                (tmp / split).mkdir()
                for _ in range(count):
                    phantom = make_patient(number, group_of(number), config)
                    write_patient(phantom, tmp / split / phantom.name, write_4d=config.write_4d)
                    result.patients.append(out_dir / split / phantom.name)
                    tracker.advance()
                    number += 1
    except OSError as exc:
        raise OutputError(f"cannot write {out_dir}: {exc}") from exc
    return result
