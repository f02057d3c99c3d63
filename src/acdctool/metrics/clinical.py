"""Clinical indices of the ACDC challenge and the statistics that compare them.

From the short-axis stack of one frame ``(S, H, W)`` (labels 0 background, 1 RV, 2 MYO, 3 LV),
its in-plane spacing ``(row_mm, col_mm)`` and its slice thickness (the distance between slice
centres, NIfTI ``pixdim[3]``, in mm):

- volumes in mL: voxel count × row_mm × col_mm × thickness_mm / 1000;
- ejection fraction in %: (EDV − ESV) / EDV × 100, NaN when EDV is 0;
- myocardial mass at ED in g: MYO volume (mL) × 1.05 g/mL.

Agreement between predicted and reference indices over patients, as reported by the ACDC
challenge: Pearson correlation, bias (mean of pred − ref), standard deviation of the
differences, mean absolute error.

Example:
    >>> ed = np.zeros((2, 4, 4), np.uint8); ed[:, 1:3, 1:3] = 3
    >>> es = ed.copy(); es[1] = 0
    >>> clinical_indices(ed, es, (1.0, 1.0), 10.0)["lv_ef"]
    50.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np

from acdctool.conventions import LABEL_OF, N_CLASSES
from acdctool.errors import BadInputError
from acdctool.metrics.overlap import check_label_map, check_spacing

__all__ = [
    "MYO_DENSITY_G_PER_ML",
    "STRUCTURES",
    "volumes_ml",
    "slice_volumes",
    "ejection_fraction",
    "myocardial_mass",
    "clinical_indices",
    "agreement",
]

MYO_DENSITY_G_PER_ML = 1.05
"""Myocardial tissue density used by ACDC for the mass at ED."""

STRUCTURES: dict[str, int] = LABEL_OF
"""Structure keys (lower case, as in every table of the project) and their labels."""


def _voxel_ml(spacing: Sequence[float], thickness_mm: float) -> float:
    row, col = check_spacing(spacing, 2)
    (thick,) = check_spacing([thickness_mm], 1, "thickness_mm")
    return row * col * thick / 1000.0  # mm³ -> mL


def volumes_ml(masks: np.ndarray, spacing: Sequence[float], thickness_mm: float) -> dict[str, float]:
    """Volumes (mL) of RV, MYO and LV in the slice stack of one frame.

    Args:
        masks: label maps ``(S, H, W)`` of one frame (one slice ``(H, W)`` is accepted too).
        spacing: in-plane ``(row_mm, col_mm)``.
        thickness_mm: distance between slice centres, in mm.

    Returns:
        ``{"rv": mL, "myo": mL, "lv": mL}``.

    Raises:
        BadInputError: not 2D/3D, labels outside 0..3, or bad spacing/thickness.
    """
    masks = check_label_map(masks, (2, 3), "masks")
    counts = np.bincount(masks.ravel(), minlength=N_CLASSES)
    voxel = _voxel_ml(spacing, thickness_mm)
    return {name: float(counts[label] * voxel) for name, label in STRUCTURES.items()}


def slice_volumes(
    masks: np.ndarray, spacings: Sequence[float] | np.ndarray, thickness_mm: float | Sequence[float] | np.ndarray
) -> np.ndarray:
    """Volume (mL) of RV, MYO and LV in each slice of a stack, vectorised over slices.

    Sum the rows of one frame to get its volumes: this is how an evaluation over thousands of
    slices from many patients (each with its own spacing) gets every volume at once.

    Args:
        masks: label maps ``(N, H, W)``.
        spacings: ``(N, 2)`` per-slice ``(row_mm, col_mm)``, or one ``(2,)`` pair for all.
        thickness_mm: ``(N,)`` per-slice thickness (mm), or one value for all.

    Returns:
        float64 ``(N, 3)``: columns rv, myo, lv (the order of :data:`STRUCTURES`).

    Raises:
        BadInputError: wrong shapes, labels outside 0..3, or non-positive spacing/thickness.
    """
    masks = check_label_map(masks, 3, "masks")
    n = masks.shape[0]
    sp = np.asarray(spacings, dtype=float)
    sp = np.broadcast_to(sp, (n, 2)) if sp.shape == (2,) else sp
    th = np.asarray(thickness_mm, dtype=float)
    th = np.broadcast_to(th, (n,)) if th.ndim == 0 else th
    if sp.shape != (n, 2) or th.shape != (n,):
        raise BadInputError(f"spacings/thickness: expected ({n}, 2) and ({n},), got {sp.shape} and {th.shape}")
    if not (np.all(np.isfinite(sp) & (sp > 0)) and np.all(np.isfinite(th) & (th > 0))):
        raise BadInputError("spacings and thickness must be positive and finite")
    flat = masks.reshape(n, -1)
    counts = np.stack([np.count_nonzero(flat == label, axis=1) for label in STRUCTURES.values()], axis=1)
    voxel_ml = sp[:, 0] * sp[:, 1] * th / 1000.0
    return counts * voxel_ml[:, None]


@overload
def ejection_fraction(edv: float, esv: float) -> float: ...
@overload
def ejection_fraction(edv: np.ndarray, esv: float | np.ndarray) -> np.ndarray: ...
@overload
def ejection_fraction(edv: float | np.ndarray, esv: np.ndarray) -> np.ndarray: ...
def ejection_fraction(edv: float | np.ndarray, esv: float | np.ndarray) -> float | np.ndarray:
    """Ejection fraction (%) (EDV − ESV) / EDV × 100; NaN where EDV is 0.

    Works elementwise on arrays of volumes (mL); returns a float for scalar inputs.
    """
    edv_a, esv_a = np.asarray(edv, dtype=float), np.asarray(esv, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ef = np.where(edv_a == 0, np.nan, (edv_a - esv_a) / edv_a * 100.0)
    return float(ef) if ef.ndim == 0 else ef


@overload
def myocardial_mass(myo_volume_ml: float) -> float: ...
@overload
def myocardial_mass(myo_volume_ml: np.ndarray) -> np.ndarray: ...
def myocardial_mass(myo_volume_ml: float | np.ndarray) -> float | np.ndarray:
    """Myocardial mass (g) from the MYO volume at ED (mL): volume × 1.05 g/mL."""
    mass = np.asarray(myo_volume_ml, dtype=float) * MYO_DENSITY_G_PER_ML
    return float(mass) if mass.ndim == 0 else mass


def clinical_indices(
    ed_masks: np.ndarray, es_masks: np.ndarray, spacing: Sequence[float], thickness_mm: float
) -> dict[str, float]:
    """The ACDC clinical indices of one patient from its ED and ES stacks.

    Args:
        ed_masks: label maps ``(S, H, W)`` at end-diastole.
        es_masks: label maps ``(S', H, W)`` at end-systole (same geometry).
        spacing: in-plane ``(row_mm, col_mm)``.
        thickness_mm: distance between slice centres, in mm.

    Returns:
        ``lv_edv, lv_esv, rv_edv, rv_esv`` (mL), ``lv_ef, rv_ef`` (%, NaN if EDV is 0),
        ``myo_mass`` (g, at ED).

    Raises:
        BadInputError: bad masks, spacing or thickness.
    """
    ed = volumes_ml(ed_masks, spacing, thickness_mm)
    es = volumes_ml(es_masks, spacing, thickness_mm)
    return {
        "lv_edv": ed["lv"],
        "lv_esv": es["lv"],
        "lv_ef": ejection_fraction(ed["lv"], es["lv"]),
        "rv_edv": ed["rv"],
        "rv_esv": es["rv"],
        "rv_ef": ejection_fraction(ed["rv"], es["rv"]),
        "myo_mass": myocardial_mass(ed["myo"]),
    }


def agreement(pred: Sequence[float] | np.ndarray, ref: Sequence[float] | np.ndarray, ddof: int = 1) -> dict[str, float]:
    """Correlation, bias, std of differences and MAE between predicted and reference indices.

    Pairs with a NaN (or inf) on either side are dropped first, e.g. an EF with EDV 0.

    Args:
        pred: predicted index per patient (e.g. LV EF %), 1D.
        ref: reference index per patient, same length.
        ddof: delta degrees of freedom of the std (1: sample std, as Bland–Altman limits use).

    Returns:
        A JSON-ready dict: ``n`` (pairs used), ``corr`` (Pearson; NaN if n < 2 or a series is
        constant), ``bias`` (mean of pred − ref), ``std`` (std of pred − ref), ``mae`` (mean
        absolute difference); all in the index's unit, NaN when no pair is left.

    Raises:
        BadInputError: not 1D or lengths differ.

    Example:
        >>> agreement([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])["bias"]
        -0.3333333333333333
    """
    p, r = np.asarray(pred, dtype=float), np.asarray(ref, dtype=float)
    if p.ndim != 1 or r.shape != p.shape:
        raise BadInputError(f"pred and ref must be 1D of the same length, got {p.shape} and {r.shape}")
    keep = np.isfinite(p) & np.isfinite(r)
    p, r = p[keep], r[keep]
    n = int(p.size)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "corr": nan, "bias": nan, "std": nan, "mae": nan}
    d = p - r
    pc, rc = p - p.mean(), r - r.mean()
    denom = float(np.sqrt((pc * pc).sum() * (rc * rc).sum()))
    return {
        "n": n,
        "corr": float((pc * rc).sum() / denom) if n >= 2 and denom > 0 else nan,
        "bias": float(d.mean()),
        "std": float(d.std(ddof=ddof)) if n > ddof else nan,
        "mae": float(np.abs(d).mean()),
    }
