"""``export-model``: a lean copy of a checkpoint (weights, constructor arguments, preprocessing).

The copy drops the training state (optimiser, scheduler, RNG states, history) that only
``--resume`` needs (:mod:`acdctool.io.model_export`); ``predict``, ``gen-seg`` and ``refine``
take it like the original. ``--slices`` adds the preprocessing record to a checkpoint trained
before it was stored (checked against the checkpoint's data hash). ``--torchscript`` writes a
traced segmentation net for use without acdctool instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acdctool.config import ExportModelConfig
from acdctool.data.crop_rule import preprocessing_of
from acdctool.errors import BadInputError, FileKindError
from acdctool.io.atomic import check_output
from acdctool.io.checkpoint import file_sha256, load_checkpoint
from acdctool.io.model_export import is_torchscript, write_lean, write_torchscript
from acdctool.io.slices import SliceFile
from acdctool.progress import Progress
from acdctool.provenance import Provenance, make_provenance


@dataclass(frozen=True)
class Inputs:
    """What export-model reads."""

    checkpoint: Path
    """A train-seg or train-nvae checkpoint (``best.pt``, ``last.pt``) or a lean copy."""
    slices: Path | None = None
    """The slice file the model was trained on: adds its preprocessing record when the
    checkpoint lacks one."""
    provenance: Provenance | None = None
    """Stored in the copy (under ``provenance["export"]``); None: made here."""


@dataclass
class Result:
    """What export-model wrote: path, kind, sizes in bytes, whether a preprocessing record was added."""

    path: Path
    kind: str
    bytes_in: int
    bytes_out: int
    prep_added: bool
    torchscript: bool


def run(
    config: ExportModelConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Write a lean (or TorchScript) copy of ``inputs.checkpoint`` to ``output`` (atomically).

    Raises:
        InputMissingError, FileKindError, SchemaVersionError, BadInputError: an unreadable
            checkpoint (or a TorchScript file); ``slices`` is not the file the model trained on,
            or records no preprocessing; ``--torchscript`` on an NVAE.
        OutputError: ``output`` exists without ``force``, or is the checkpoint itself.

    Example:
        >>> run(ExportModelConfig(), Inputs(Path("runs/unet-f0/best.pt")), Path("unet-f0.pt"))  # doctest: +SKIP
    """
    src, out = Path(inputs.checkpoint), Path(output)
    if src.is_file() and is_torchscript(src):
        raise FileKindError(f"{src}: already a TorchScript export; give the acdctool checkpoint")
    ck = load_checkpoint(src)
    check_output(out, force, [src, inputs.slices])
    prep = None
    if inputs.slices is not None:
        with SliceFile(inputs.slices) as f:
            kind, stored = f.kind, f.config
        recorded = ck.data.get("sha256")
        if recorded and file_sha256(inputs.slices) != recorded:
            raise BadInputError(f"{inputs.slices}: not the file {src} was trained on (its SHA-256 differs)")
        prep = preprocessing_of(kind, stored)
        if prep is None:
            raise BadInputError(f"{inputs.slices}: a '{kind}' file; only prep files record how they were cropped")
    if config.torchscript:
        write_torchscript(ck, out, prep=prep, force=force)
    else:
        provenance = make_provenance([src]) if inputs.provenance is None else inputs.provenance
        write_lean(ck, out, prep=prep, provenance=provenance)
    return Result(out, ck.kind, src.stat().st_size, out.stat().st_size, prep is not None, config.torchscript)
