"""Masks back to NIfTI in the original ACDC geometry (crop and resize undone).

Inverse of prep's geometry: prep maps original pixel rows ``[r0, r0+crop)`` onto ``size`` output
pixels keeping the field of view, so output pixel ``i`` is centred at original row
``r0 − ½ + (i + ½)·crop/size``. Export resamples each label's one-hot channel back onto the
``crop × crop`` grid with the same half-pixel convention (bilinear, then argmax) and pastes it
at ``(r0, c0)``, dropping what overhangs the image. The source image's header and affine are
kept, so the masks open over the original image in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acdctool.errors import BadInputError, InputMissingError
from acdctool.io.acdc import find_patients, frame_paths
from acdctool.io.atomic import atomic_dir
from acdctool.io.slices import SliceFile

_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class ExportResult:
    out_dir: Path
    files: list[Path]


def uncrop(labels: np.ndarray, r0: int, c0: int, crop: int, shape: tuple[int, int]) -> np.ndarray:
    """(Z, size, size) labels → (rows, cols, Z) uint8 on the original grid (the NIfTI layout)."""
    import torch
    import torch.nn.functional as F

    from acdctool.data.loader import argmax_labels

    z = labels.shape[0]
    onehot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), 4).permute(0, 3, 1, 2).float()
    big = F.interpolate(onehot, size=(crop, crop), mode="bilinear", align_corners=False)
    big = argmax_labels(big).numpy()
    out = np.zeros((shape[0], shape[1], z), dtype=np.uint8)
    r_lo, r_hi = max(r0, 0), min(r0 + crop, shape[0])
    c_lo, c_hi = max(c0, 0), min(c0 + crop, shape[1])
    if r_lo < r_hi and c_lo < c_hi:
        out[r_lo:r_hi, c_lo:c_hi] = big[:, r_lo - r0 : r_hi - r0, c_lo - c0 : c_hi - c0].transpose(1, 2, 0)
    return out


def export_nifti(
    path: Path,
    like: Path,
    out_dir: Path,
    *,
    array: str | None = None,
    force: bool = False,
    on_volume: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write every volume of ``path`` as ``patientNNN_frameYY_<name>.nii.gz`` in ``out_dir``.

    Args:
        path: any slice file.
        like: the ACDC folder the file was prepped from (headers, affines and shapes come
            from its ``patientNNN_frameYY.nii.gz`` images).
        out_dir: created atomically.
        array: ``pred`` or ``gt`` (default: ``pred`` when present, else ``gt``). ``<name>`` is
            the row's model (e.g. ``unet``) for predictions, ``gt`` for ground truth.

    Raises:
        BadInputError: the file lacks the array; a volume has missing slices; the source image
            has another shape than the file recorded. InputMissingError: a patient or frame is
            not in ``like``. OutputError: ``out_dir`` exists without ``force``.
    """
    import nibabel as nib

    patients = {p.name: p for p in find_patients(like)}
    with SliceFile(path) as f:
        name = array or ("pred" if f.has("pred") else "gt")
        masks = f.read(name)
        index = f.index
    files: list[Path] = []
    with atomic_dir(out_dir, force) as tmp:
        for (patient, phase, model), rows in index.groupby(["patient", "phase", "model"], sort=True).indices.items():
            rows = rows[np.argsort(index["slice"].to_numpy()[rows])]
            first = index.iloc[rows[0]]
            if len(rows) != int(first.n_slices):
                raise BadInputError(
                    f"{path}: {patient} {phase} has {len(rows)} of {first.n_slices} slices; cannot rebuild the volume"
                )
            if patient not in patients:
                raise InputMissingError(f"{like}: no folder for {patient}")
            image_path, _ = frame_paths(patients[patient], int(first.frame))
            if not image_path.exists():
                raise InputMissingError(f"{image_path}: missing (needed for its header and affine)")
            src = nib.load(str(image_path))
            if src.shape[:2] != (int(first.orig_rows), int(first.orig_cols)) or src.shape[2] != len(rows):
                raise BadInputError(f"{image_path}: shape {src.shape} differs from what {path} was made from")
            volume = uncrop(masks[rows], int(first.crop_r0), int(first.crop_c0), int(first.crop_size), src.shape[:2])
            header = src.header.copy()
            header.set_data_dtype(np.uint8)
            label = "gt" if name == "gt" else (_NAME_RE.sub("-", model) or "pred")
            out_name = f"{patient}_frame{int(first.frame):02d}_{label}.nii.gz"
            nib.save(nib.Nifti1Image(volume, src.affine, header), str(tmp / out_name))
            files.append(Path(out_dir) / out_name)
            if on_volume is not None:
                on_volume(out_name)
    return ExportResult(Path(out_dir), files)
