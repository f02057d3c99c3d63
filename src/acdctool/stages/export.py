"""``export``: any stage's masks back to NIfTI volumes in the original ACDC geometry.

Crop and resize are undone by :func:`acdctool.io.export.uncrop`; each volume keeps its source
image's header and affine, so ``patientNNN_frameYY_<name>.nii.gz`` opens over the original
image in ITK-SNAP or 3D Slicer.

Files made by ``import-seg`` (and the stages after it) record their source files
(:data:`acdctool.data.imported.SOURCE_COLUMNS`): their images are found without ``like``, files
are named ``<case>_<name>.nii.gz``, and slices unchanged since import are copied bit-identical
from the source masks (:func:`acdctool.data.imported.restore_unchanged`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.config import ExportConfig, Masks
from acdctool.data.imported import restore_unchanged
from acdctool.errors import BadInputError, ConfigError, InputMissingError
from acdctool.io.acdc import find_patients, frame_paths
from acdctool.io.atomic import atomic_dir
from acdctool.io.export import uncrop
from acdctool.io.slices import SliceFile, volume_groups
from acdctool.progress import Progress, Tracker

_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Inputs:
    """What export reads."""

    file: Path
    """A slice file from any stage."""
    like: Path | None = None
    """The ACDC folder the file was prepped from (headers, affines and shapes come from its
    ``patientNNN_frameYY.nii.gz`` images); None for files that record their sources (import-seg)."""


@dataclass
class Result:
    """The folder written and its NIfTI files."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    volumes: dict[tuple[str, str, str], Path] = field(default_factory=dict)
    """(patient, phase, model) → its file."""


def run(
    config: ExportConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Write every volume of ``inputs.file`` as ``patientNNN_frameYY_<name>.nii.gz`` in ``output``.

    ``<name>`` is the row's model (e.g. ``unet``) for predictions, ``gt`` for ground truth.

    Args:
        config: which masks (``pred`` or ``gt``; default ``pred`` when present, else ``gt``).
        inputs: the slice file and the ACDC folder it came from.
        output: the folder to create (atomically).
        force: replace an existing folder.
        progress: one event per volume written (unit ``volumes``).

    Raises:
        BadInputError: the file lacks the array; a volume has missing slices; the source image
            has another shape than the file recorded. InputMissingError: a patient or frame is
            not in ``like``. ConfigError: no ``like`` for a file without sources. OutputError:
            ``output`` exists without ``force``, or would replace the slice file, a patient
            folder of ``like`` or a source image.

    Example:
        >>> run(ExportConfig(), Inputs(Path("refined.h5"), Path("ACDC/training")), Path("nifti"))  # doctest: +SKIP
    """
    import nibabel as nib

    path, out_dir = Path(inputs.file), Path(output)
    with SliceFile(path) as f:
        name = config.array or (Masks.PRED.value if f.has(Masks.PRED.value) else Masks.GT.value)
        masks = f.read(name)
        index = f.index
    sourced = "source_image" in index.columns
    if inputs.like is None and not sourced:
        raise ConfigError(f"{path}: give --like ACDC_DIR, the folder it was prepped from")
    like = Path(inputs.like) if inputs.like is not None else None
    patients = {p.name: p for p in find_patients(like)} if like is not None and not sourced else {}
    if len(index) == 0:
        raise BadInputError(f"{path}: the file has no rows; nothing to export")
    volumes = volume_groups(index)
    result = Result(out_dir)
    tracker = Tracker(progress, len(volumes), "volumes")
    # What is read (the slice file, the patient folders, the source images) may not be replaced.
    sources = {str(v) for c in index.columns if c.startswith("source_") for v in index[c].unique() if str(v)}
    read: list[Path | str | None] = [path, *(p.path for p in patients.values()), *sorted(sources)]
    with atomic_dir(out_dir, force, inputs=read) as tmp:
        for (patient, phase, model), rows in volumes:
            first = index.iloc[rows[0]]
            if len(rows) != int(first.n_slices):
                raise BadInputError(
                    f"{path}: {patient} {phase} has {len(rows)} of {first.n_slices} slices; cannot rebuild the volume"
                )
            if sourced:
                image_path = Path(first.source_image)
            elif patient not in patients:
                raise InputMissingError(f"{like}: no folder for {patient}")
            else:
                image_path, _ = frame_paths(patients[patient], int(first.frame))
            if not image_path.exists():
                raise InputMissingError(f"{image_path}: missing (needed for its header and affine)")
            src: Any = nib.load(str(image_path))  # a Nifti1Image
            if src.shape[:2] != (int(first.orig_rows), int(first.orig_cols)) or src.shape[2] != len(rows):
                raise BadInputError(f"{image_path}: shape {src.shape} differs from what {path} was made from")
            volume = uncrop(masks[rows], int(first.crop_r0), int(first.crop_c0), int(first.crop_size), src.shape[:2])
            if sourced:
                volume = restore_unchanged(volume, masks[rows], index.iloc[rows], name)
            header = src.header.copy()
            header.set_data_dtype(np.uint8)
            label = "gt" if name == Masks.GT.value else (_NAME_RE.sub("-", model) or "pred")
            stem = first.case if sourced else f"{patient}_frame{int(first.frame):02d}"
            out_name = f"{stem}_{label}.nii.gz"
            nib.save(nib.Nifti1Image(volume, src.affine, header), str(tmp / out_name))
            result.files.append(out_dir / out_name)
            result.volumes[(patient, phase, model)] = out_dir / out_name
            tracker.advance()
    return result
