"""Overlap and boundary metrics: Dice, Hausdorff distance and HD95, with ACDC conventions.

Masks are integer label maps (0 background, 1 RV, 2 MYO, 3 LV) of one 2D slice ``(H, W)`` or
one volume ``(S, H, W)``; the batched functions take stacks ``(N, H, W)``. Spacing is in mm,
one value per array axis: ``(row_mm, col_mm)`` for a slice, ``(thickness_mm, row_mm, col_mm)``
for a volume.

Conventions for empty masks (ACDC challenge, with the gaps it leaves filled in):

========================  ==========  =================================================
case                      Dice        Hausdorff / HD95
========================  ==========  =================================================
both masks empty          1.0         0.0
exactly one mask empty    0.0         NaN (undefined in ACDC: no surface to measure to)
========================  ==========  =================================================

Every score comes with the :class:`Convention` that produced it, so that a report can count
or exclude the conventional values instead of mixing them silently with measured ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from acdctool.errors import BadInputError

__all__ = [
    "LABELS",
    "Convention",
    "CONVENTION_CODES",
    "Score",
    "SurfaceScore",
    "check_label_map",
    "check_spacing",
    "dice",
    "dice_batch",
    "surface_distances",
    "hausdorff",
    "hausdorff_per_class",
    "hausdorff_batch",
]

LABELS: tuple[int, ...] = (1, 2, 3)
"""Foreground labels scored by default, in this order: RV, MYO, LV."""

_N_CLASSES = 4  # labels 0..3
_BATCH_CHUNK = 512  # slices per bincount call: bounds the int32 index array (~32 MB at 128²)


class Convention(str, Enum):
    """Which rule produced a score: measured, or fixed by an empty-mask convention."""

    NORMAL = "normal"
    BOTH_EMPTY = "both_empty"
    ONE_EMPTY = "one_empty"


CONVENTION_CODES: tuple[Convention, ...] = (
    Convention.NORMAL,
    Convention.BOTH_EMPTY,
    Convention.ONE_EMPTY,
)
"""Meaning of the int8 codes returned by the batched functions: ``CONVENTION_CODES[code]``."""


class Score(NamedTuple):
    """A score and the convention that produced it."""

    value: float
    convention: Convention


class SurfaceScore(NamedTuple):
    """Hausdorff distance and HD95 in mm, and the convention that produced them."""

    hd: float
    hd95: float
    convention: Convention


def check_label_map(mask: np.ndarray, ndim: int | Sequence[int], name: str = "mask") -> np.ndarray:
    """Check that ``mask`` is an integer label map with values in 0..3 and an allowed ndim.

    Args:
        mask: array of labels (any integer or bool dtype).
        ndim: allowed number(s) of dimensions.
        name: how to call the array in error messages.

    Returns:
        ``mask`` as a numpy array (not copied when already one).

    Raises:
        BadInputError: wrong ndim, non-integer dtype, or a label outside 0..3.
    """
    arr = np.asarray(mask)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if arr.ndim not in allowed:
        raise BadInputError(f"{name}: expected {' or '.join(f'{d}D' for d in allowed)} array, got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise BadInputError(f"{name}: expected an integer label map, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind != "b":
        lo, hi = (0, int(arr.max())) if arr.dtype.kind == "u" else (int(arr.min()), int(arr.max()))
        if lo < 0 or hi >= _N_CLASSES:
            raise BadInputError(f"{name}: labels must be in 0..{_N_CLASSES - 1}, found values in {lo}..{hi}")
    return arr


def check_spacing(spacing: Sequence[float] | np.ndarray, ndim: int, name: str = "spacing") -> tuple[float, ...]:
    """Check that ``spacing`` has ``ndim`` positive finite values (mm) and return it as floats.

    Raises:
        BadInputError: wrong length, or a value that is not positive and finite.
    """
    values = np.asarray(spacing, dtype=np.float64).ravel()
    if values.size != ndim:
        raise BadInputError(f"{name}: expected {ndim} values (mm), got {values.size}")
    if not np.all(np.isfinite(values) & (values > 0)):
        raise BadInputError(f"{name}: values must be positive and finite, got {tuple(values)}")
    return tuple(float(v) for v in values)


def _check_pair(pred: np.ndarray, gt: np.ndarray, ndim: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    pred = check_label_map(pred, ndim, "pred")
    gt = check_label_map(gt, ndim, "gt")
    if pred.shape != gt.shape:
        raise BadInputError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def _dice_from_counts(inter: np.ndarray, n_pred: np.ndarray, n_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = n_pred + n_gt
    codes = np.where(total == 0, 1, np.where((n_pred == 0) | (n_gt == 0), 2, 0)).astype(np.int8)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(total == 0, 1.0, 2.0 * inter / total)
    return values.astype(np.float64), codes


def dice(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int] = LABELS) -> dict[int, Score]:
    """Dice 2|A∩B|/(|A|+|B|) per label for one slice ``(H, W)`` or one volume ``(S, H, W)``.

    Args:
        pred: predicted label map.
        gt: reference label map, same shape.
        labels: labels to score.

    Returns:
        ``{label: Score(value, convention)}``; both empty gives 1.0 (``BOTH_EMPTY``), one empty
        0.0 (``ONE_EMPTY``).

    Raises:
        BadInputError: shapes differ, not 2D/3D, or labels outside 0..3.

    Example:
        >>> gt = np.zeros((4, 4), np.uint8); gt[1:3, 1:3] = 3
        >>> dice(gt, gt)[3]
        Score(value=1.0, convention=<Convention.NORMAL: 'normal'>)
    """
    pred, gt = _check_pair(pred, gt, (2, 3))
    conf = np.bincount((pred.astype(np.intp) * _N_CLASSES + gt).ravel(), minlength=_N_CLASSES**2)
    conf = conf.reshape(_N_CLASSES, _N_CLASSES)  # rows: pred label, columns: gt label
    idx = np.asarray(labels, dtype=np.intp)
    values, codes = _dice_from_counts(conf[idx, idx], conf.sum(1)[idx], conf.sum(0)[idx])
    return {int(k): Score(float(v), CONVENTION_CODES[c]) for k, v, c in zip(idx, values, codes)}


def dice_batch(
    pred: np.ndarray, gt: np.ndarray, labels: Sequence[int] = LABELS
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Dice over a stack of slices (or volumes) ``(N, ...)``.

    One ``bincount`` of ``n*16 + pred*4 + gt`` gives a 4×4 confusion matrix per item, so the
    cost is a single pass over the data whatever the number of labels.

    Args:
        pred: predicted label maps ``(N, H, W)`` (or ``(N, S, H, W)``).
        gt: reference label maps, same shape.
        labels: labels to score (columns of the outputs).

    Returns:
        ``(values, codes)``: Dice ``(N, len(labels))`` float64 and convention codes
        ``(N, len(labels))`` int8, decoded by :data:`CONVENTION_CODES`.

    Raises:
        BadInputError: shapes differ, fewer than 3 dimensions, or labels outside 0..3.

    Example:
        >>> values, codes = dice_batch(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8))
        >>> values.tolist(), codes.tolist()
        ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [[1, 1, 1], [1, 1, 1]])
    """
    pred, gt = _check_pair(pred, gt, (3, 4))
    n = pred.shape[0]
    k2 = _N_CLASSES**2
    conf = np.empty((n, k2), dtype=np.int64)
    for start in range(0, n, _BATCH_CHUNK):
        p = pred[start : start + _BATCH_CHUNK]
        g = gt[start : start + _BATCH_CHUNK]
        m = p.shape[0]
        code = p.astype(np.int32).reshape(m, -1) * _N_CLASSES + g.reshape(m, -1)
        code += (np.arange(m, dtype=np.int32) * k2)[:, None]
        conf[start : start + m] = np.bincount(code.ravel(), minlength=m * k2).reshape(m, k2)
    conf = conf.reshape(n, _N_CLASSES, _N_CLASSES)
    idx = np.asarray(labels, dtype=np.intp)
    return _dice_from_counts(conf[:, idx, idx], conf.sum(2)[:, idx], conf.sum(1)[:, idx])


def _edges(mask: np.ndarray) -> np.ndarray:
    # Foreground voxels with a face-neighbour outside the mask (array border counts as outside),
    # i.e. mask XOR erosion by the cross: the surface MONAI's get_mask_edges uses.
    return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1))


def _bbox_crop(mask: np.ndarray) -> tuple[slice, ...]:
    sl = []
    for axis in range(mask.ndim):
        any_ax = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        sl.append(slice(int(any_ax[0]), int(any_ax[-1]) + 1))
    return tuple(sl)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm) between two non-empty binary masks.

    The surface of a mask is its voxels with a face-neighbour outside it (6-connectivity in
    3D, 4 in 2D; the array border counts as outside), as in MONAI's ``get_mask_edges``. The
    distance of a surface voxel is the Euclidean distance (with ``spacing``) to the nearest
    surface voxel of the other mask, from ``distance_transform_edt(sampling=spacing)``.

    Args:
        pred: binary mask ``(H, W)`` or ``(S, H, W)`` (bool or 0/1); must not be empty.
        gt: binary mask, same shape; must not be empty.
        spacing: voxel size in mm along each axis.

    Returns:
        ``(pred_to_gt, gt_to_pred)``: 1D float64 arrays, one distance per surface voxel.

    Raises:
        BadInputError: shapes differ, wrong spacing, or an empty mask.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise BadInputError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    sampling = check_spacing(spacing, pred.ndim)
    if not pred.any() or not gt.any():
        raise BadInputError("surface distances need two non-empty masks")
    # Crop to the union's bounding box plus a 1-voxel background margin: every surface voxel
    # lies inside it, so nearest-surface distances are unchanged and the EDTs get much smaller.
    box = _bbox_crop(pred | gt)
    pad = [(1, 1)] * pred.ndim
    p, g = np.pad(pred[box], pad), np.pad(gt[box], pad)
    ep, eg = _edges(p), _edges(g)
    to_gt = ndimage.distance_transform_edt(~eg, sampling=sampling)[ep]
    to_pred = ndimage.distance_transform_edt(~ep, sampling=sampling)[eg]
    return to_gt, to_pred


def hausdorff(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> SurfaceScore:
    """Symmetric Hausdorff distance and HD95 (mm) between two binary masks.

    HD is the largest surface distance in either direction. HD95 follows MONAI's
    ``compute_hausdorff_distance(percentile=95)``: the 95th percentile (linear interpolation)
    of each directed set of surface distances, then the larger of the two; it is *not* the
    percentile of the pooled distances of both directions.

    Args:
        pred: binary mask ``(H, W)`` with ``spacing=(row_mm, col_mm)``, or ``(S, H, W)`` with
            ``spacing=(thickness_mm, row_mm, col_mm)``.
        gt: binary mask, same shape.
        spacing: voxel size in mm along each axis.

    Returns:
        ``SurfaceScore(hd, hd95, convention)``: both empty gives 0.0 (``BOTH_EMPTY``), one
        empty NaN (``ONE_EMPTY``).

    Raises:
        BadInputError: shapes differ or wrong spacing.

    Example:
        >>> a = np.zeros((9, 9), bool); a[2:5, 2:5] = True
        >>> b = np.zeros((9, 9), bool); b[2:5, 4:7] = True
        >>> hausdorff(a, b, (1.0, 2.0)).hd
        4.0
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise BadInputError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    check_spacing(spacing, pred.ndim)
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return SurfaceScore(0.0, 0.0, Convention.BOTH_EMPTY)
    if not has_p or not has_g:
        return SurfaceScore(float("nan"), float("nan"), Convention.ONE_EMPTY)
    to_gt, to_pred = surface_distances(pred, gt, spacing)
    hd = max(float(to_gt.max()), float(to_pred.max()))
    hd95 = max(float(np.percentile(to_gt, 95)), float(np.percentile(to_pred, 95)))
    return SurfaceScore(hd, hd95, Convention.NORMAL)


def hausdorff_per_class(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], labels: Sequence[int] = LABELS
) -> dict[int, SurfaceScore]:
    """Hausdorff distance and HD95 (mm) per label for a slice ``(H, W)`` or volume ``(S, H, W)``.

    Args:
        pred: predicted label map.
        gt: reference label map, same shape.
        spacing: ``(row_mm, col_mm)`` for a slice, ``(thickness_mm, row_mm, col_mm)`` for a volume.
        labels: labels to score.

    Returns:
        ``{label: SurfaceScore(hd, hd95, convention)}``, see :func:`hausdorff`.

    Raises:
        BadInputError: shapes differ, wrong spacing, or labels outside 0..3.
    """
    pred, gt = _check_pair(pred, gt, (2, 3))
    check_spacing(spacing, pred.ndim)
    return {int(k): hausdorff(pred == k, gt == k, spacing) for k in labels}


def hausdorff_batch(
    pred: np.ndarray,
    gt: np.ndarray,
    spacings: Sequence[float] | np.ndarray,
    labels: Sequence[int] = LABELS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hausdorff distance and HD95 (mm) per slice and label for stacks ``(N, H, W)``.

    Args:
        pred: predicted label maps ``(N, H, W)``.
        gt: reference label maps, same shape.
        spacings: ``(N, 2)`` per-slice ``(row_mm, col_mm)``, or one ``(2,)`` pair for all.
        labels: labels to score (columns of the outputs).

    Returns:
        ``(hd, hd95, codes)``, each ``(N, len(labels))``: float64 distances in mm and int8
        convention codes decoded by :data:`CONVENTION_CODES`.

    Raises:
        BadInputError: shapes differ, wrong spacings, or labels outside 0..3.
    """
    pred, gt = _check_pair(pred, gt, 3)
    n = pred.shape[0]
    sp = np.asarray(spacings, dtype=np.float64)
    sp = np.broadcast_to(sp, (n, 2)) if sp.shape == (2,) else sp
    if sp.shape != (n, 2):
        raise BadInputError(f"spacings: expected shape ({n}, 2) or (2,), got {np.shape(spacings)}")
    if not np.all(np.isfinite(sp) & (sp > 0)):
        raise BadInputError("spacings: values must be positive and finite")
    idx = np.asarray(labels, dtype=np.intp)
    hd = np.zeros((n, idx.size))
    hd95 = np.zeros((n, idx.size))
    codes = np.zeros((n, idx.size), dtype=np.int8)
    # Presence per slice and label from one vectorised pass: empty cases never reach the EDTs.
    has_p = np.stack([(pred == k).any(axis=(1, 2)) for k in idx], axis=1)
    has_g = np.stack([(gt == k).any(axis=(1, 2)) for k in idx], axis=1)
    codes[~has_p & ~has_g] = 1
    codes[has_p ^ has_g] = 2
    hd[has_p ^ has_g] = np.nan
    hd95[has_p ^ has_g] = np.nan
    for i, j in zip(*np.nonzero(has_p & has_g)):
        score = hausdorff(pred[i] == idx[j], gt[i] == idx[j], tuple(sp[i]))
        hd[i, j], hd95[i, j] = score.hd, score.hd95
    return hd, hd95, codes
