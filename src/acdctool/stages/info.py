"""``info``: the summary of a slice file (rows, patients per group and split, folds, arrays,
config, provenance), as :meth:`acdctool.io.slices.SliceFile.summary` computes it, or of a model
file (checkpoint, lean copy or TorchScript export: kind, model and arguments, training data
and fold, crop rule, metrics, versions), as :func:`acdctool.io.model_export.summary` does."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acdctool.config import InfoConfig
from acdctool.io.checkpoint import load_checkpoint
from acdctool.io.model_export import is_torchscript, summary, summary_of_metadata, torchscript_metadata
from acdctool.io.slices import SliceFile
from acdctool.progress import Progress


@dataclass(frozen=True)
class Inputs:
    """What info reads."""

    file: Path
    """A slice file written by any stage, or a model file (checkpoint, export-model copy)."""


@dataclass
class Result:
    """The file's summary, a JSON-ready dict (``format`` tells a model file from a slice file)."""

    summary: dict[str, Any]


def run(
    config: InfoConfig, inputs: Inputs, output: None, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Summarise ``inputs.file``; nothing is written (``output``, ``force`` and ``progress`` are unused).

    Raises:
        InputMissingError, FileKindError, SchemaVersionError, BadInputError: an unreadable slice
            file or checkpoint.

    Example:
        >>> run(InfoConfig(), Inputs(Path("slices.h5")), None).summary["patients_per_group"]  # doctest: +SKIP
        {'DCM': 20, 'HCM': 20, 'MINF': 20, 'NOR': 20, 'RV': 20}
    """
    path = Path(inputs.file)
    if path.is_file() and zipfile.is_zipfile(path):  # torch.save and TorchScript both write zip archives
        if is_torchscript(path):
            meta = torchscript_metadata(path)
            return Result({"path": str(path), "format": "torchscript", **summary_of_metadata(meta)})
        return Result(summary(load_checkpoint(path)))
    with SliceFile(path) as f:
        return Result(f.summary())
