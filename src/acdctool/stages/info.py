"""``info``: the summary of a slice file (rows, patients per group and split, folds, arrays,
config, provenance), as :meth:`acdctool.io.slices.SliceFile.summary` computes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acdctool.config import InfoConfig
from acdctool.io.slices import SliceFile
from acdctool.progress import Progress


@dataclass(frozen=True)
class Inputs:
    """What info reads."""

    file: Path
    """A slice file written by any stage."""


@dataclass
class Result:
    """The file's summary, a JSON-ready dict."""

    summary: dict[str, Any]


def run(
    config: InfoConfig, inputs: Inputs, output: None, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Summarise ``inputs.file``; nothing is written (``output``, ``force`` and ``progress`` are unused).

    Raises:
        InputMissingError, FileKindError, SchemaVersionError: an unreadable slice file.

    Example:
        >>> run(InfoConfig(), Inputs(Path("slices.h5")), None).summary["patients_per_group"]  # doctest: +SKIP
        {'DCM': 20, 'HCM': 20, 'MINF': 20, 'NOR': 20, 'RV': 20}
    """
    with SliceFile(inputs.file) as f:
        return Result(f.summary())
