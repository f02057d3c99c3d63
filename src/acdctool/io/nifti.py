"""NIfTI volumes from any tool: 3D checks, image/mask geometry checks, label maps, masks written over an image.

The voxel size always comes from pixdim (``header.get_zooms()``), never from the affine: ACDC
headers carry a unit-scale affine (SPEC §4). The affine is compared between an image and its
masks (same scanner grid), and copied to every mask written (:func:`save_mask_like`), so masks
open over their image in ITK-SNAP or 3D Slicer.

Array axes are kept as stored: a volume is (X, Y, Z) and its 2D slices ``volume[:, :, z]``
(rows along X with spacing ``zooms[0]``, columns along Y with ``zooms[1]``), as in prep.

Example:
    >>> vol = read_volume("patient001_frame01.nii.gz")  # doctest: +SKIP
    >>> vol.spacing  # doctest: +SKIP
    (1.5625, 1.5625, 10.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.errors import BadInputError
from acdctool.io.acdc import load_nifti
from acdctool.io.labelmap import LabelMap

AFFINE_TOLERANCE_MM = 1e-3
"""Largest difference between an image's and its mask's affine entries still taken as the same grid."""


@dataclass(frozen=True)
class Volume:
    """A loaded NIfTI file: data as stored, voxel size (mm, from pixdim), affine and header."""

    path: Path
    data: np.ndarray
    spacing: tuple[float, float, float]
    """(row mm, col mm, slice mm) = ``zooms[:3]``."""
    affine: np.ndarray
    header: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def read_volume(path: Path | str, allow_4d: bool = False) -> Volume:
    """Load a 3D NIfTI volume (or a 4D cine with ``allow_4d``), spacing from pixdim.

    Trailing axes of length 1 beyond the third are dropped ((X, Y, Z, 1) is 3D).

    Raises:
        InputMissingError: no such file.
        BadInputError: unreadable; 2D (or 4D without ``allow_4d``); a non-positive voxel size.
    """
    path = Path(path)
    data, zooms, header = load_nifti(path)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3 or data.ndim > (4 if allow_4d else 3):
        what = "3D or 4D" if allow_4d else "3D"
        raise BadInputError(
            f"{path}: expected a {what} volume (X, Y, Z{', T' if allow_4d else ''}), got shape {data.shape}"
        )
    spacing = tuple(float(z) for z in zooms[:3])
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise BadInputError(f"{path}: invalid voxel spacing {zooms[:3]} in pixdim")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)  # type: ignore[attr-defined]
    return Volume(path, data, (spacing[0], spacing[1], spacing[2]), affine, header)


def check_same_grid(image: Volume, other: Volume, what: str = "mask", ref: str = "image") -> None:
    """Refuse a mask that does not lie on its image's voxel grid (shape, affine, voxel size).

    Only the first three axes are compared, so a 3D mask fits one frame of a 4D cine.

    Raises:
        BadInputError: naming ``other``'s file, what differs and the image it was compared with.
    """
    if other.shape[:3] != image.shape[:3]:
        raise BadInputError(
            f"{other.path}: {what} shape {other.shape[:3]} differs from its {ref} {image.path.name} {image.shape[:3]}"
        )
    diff = float(np.abs(other.affine - image.affine).max())
    if diff > AFFINE_TOLERANCE_MM:
        raise BadInputError(
            f"{other.path}: {what} affine differs from its {ref} {image.path.name} (by up to {diff:.3g} mm): "
            "resampled, or from another scan?"
        )
    if not np.allclose(other.spacing, image.spacing, rtol=1e-4):
        raise BadInputError(
            f"{other.path}: {what} voxel size {other.spacing} mm differs from its {ref} {image.path.name} "
            f"{image.spacing} mm"
        )


def to_labels(volume: Volume, mapping: LabelMap) -> np.ndarray:
    """A mask's stored values turned into acdctool labels (uint8, 0..3) through ``mapping``.

    Raises:
        BadInputError: non-integer values, or values outside the label map (naming the file).
    """
    raw = volume.data
    if np.issubdtype(raw.dtype, np.floating):
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise BadInputError(f"{volume.path}: non-integer labels (a probability map? give label masks)")
    values = np.unique(raw)
    bad = [v for v in values.tolist() if int(v) not in mapping]
    if bad:
        known = ", ".join(str(k) for k in sorted(mapping))
        raise BadInputError(
            f"{volume.path}: labels {', '.join(str(int(b)) for b in bad[:5])} outside the label map ({known}); "
            "give --labels or the dataset.json that says what they are"
        )
    if all(k == v for k, v in mapping.items()):
        return raw.astype(np.uint8, copy=False)
    lut = np.zeros(int(max(mapping)) + 1 - min(0, int(min(mapping))), dtype=np.uint8)
    offset = -min(0, int(min(mapping)))
    for k, v in mapping.items():
        lut[int(k) + offset] = v
    return lut[raw.astype(np.int64) + offset]


def save_mask_like(mask: np.ndarray, like: Volume, path: Path) -> None:
    """Write ``mask`` (X, Y, Z) uint8 with ``like``'s header and affine (voxel size kept).

    For a 4D ``like`` the header's fourth axis is dropped.
    """
    import nibabel as nib

    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(mask.shape)
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), like.affine, header)
    img.header.set_zooms(like.spacing[: mask.ndim])
    nib.save(img, str(path))
