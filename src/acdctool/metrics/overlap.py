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

from acdctool.conventions import FOREGROUND, N_CLASSES
from acdctool.errors import BadInputError

__all__ = [
    "LABELS",
    "Convention",
    "CONVENTION_CODES",
    "Score",
    "SurfaceScore",
    "check_label_map",
    "check_spacing",
    "check_spacings",
    "dice",
    "dice_batch",
    "surface_distances",
    "hausdorff",
    "hausdorff_per_class",
    "hausdorff_batch",
]

LABELS: tuple[int, ...] = FOREGROUND
"""Foreground labels scored by default, in this order: RV, MYO, LV (:data:`acdctool.conventions.FOREGROUND`)."""

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
        if lo < 0 or hi >= N_CLASSES:
            raise BadInputError(f"{name}: labels must be in 0..{N_CLASSES - 1}, found values in {lo}..{hi}")
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


def check_spacings(spacings: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """Per-slice spacings ``(n, 2)`` mm from an ``(n, 2)`` array or one ``(2,)`` pair for all.

    Raises:
        BadInputError: wrong shape, or a value that is not positive and finite.
    """
    sp = np.asarray(spacings, dtype=np.float64)
    sp = np.broadcast_to(sp, (n, 2)) if sp.shape == (2,) else sp
    if sp.shape != (n, 2):
        raise BadInputError(f"spacings: expected shape ({n}, 2) or (2,), got {np.shape(spacings)}")
    if not np.all(np.isfinite(sp) & (sp > 0)):
        raise BadInputError("spacings: values must be positive and finite")
    return sp


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
    conf = np.bincount((pred.astype(np.intp) * N_CLASSES + gt).ravel(), minlength=N_CLASSES**2)
    conf = conf.reshape(N_CLASSES, N_CLASSES)  # rows: pred label, columns: gt label
    idx = np.asarray(labels, dtype=np.intp)
    values, codes = _dice_from_counts(conf[idx, idx], conf.sum(1)[idx], conf.sum(0)[idx])
    return {int(k): Score(float(v), CONVENTION_CODES[c]) for k, v, c in zip(idx, values, codes, strict=False)}


def dice_batch(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int] = LABELS) -> tuple[np.ndarray, np.ndarray]:
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
    k2 = N_CLASSES**2
    conf = np.empty((n, k2), dtype=np.int64)
    for start in range(0, n, _BATCH_CHUNK):
        p = pred[start : start + _BATCH_CHUNK]
        g = gt[start : start + _BATCH_CHUNK]
        m = p.shape[0]
        code = p.astype(np.int32).reshape(m, -1) * N_CLASSES + g.reshape(m, -1)
        code += (np.arange(m, dtype=np.int32) * k2)[:, None]
        conf[start : start + m] = np.bincount(code.ravel(), minlength=m * k2).reshape(m, k2)
    confusion = conf.reshape(n, N_CLASSES, N_CLASSES)  # [slice, pred label, gt label]
    idx = np.asarray(labels, dtype=np.intp)
    return _dice_from_counts(confusion[:, idx, idx], confusion.sum(2)[:, idx], confusion.sum(1)[:, idx])


def _surface_labels(m: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Label of each voxel that lies on the surface of its own label's mask, else 0.

    A voxel is on the surface when a face-neighbour along ``axes`` has another label or lies
    beyond the array: exactly ``mask XOR erosion(mask, cross)`` with scipy's zero border, the
    edges of MONAI's ``get_mask_edges``, for every label at once.
    """
    inner = np.ones(m.shape, bool)
    for ax in axes:
        lo = [slice(None)] * m.ndim
        hi = [slice(None)] * m.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        equal = m[tuple(lo)] == m[tuple(hi)]
        inner[tuple(lo)] &= equal
        inner[tuple(hi)] &= equal
        first: list[slice | int] = [slice(None)] * m.ndim
        last: list[slice | int] = [slice(None)] * m.ndim
        first[ax], last[ax] = 0, -1
        inner[tuple(first)] = False
        inner[tuple(last)] = False
    return np.where(inner, 0, m).astype(m.dtype, copy=False)


def _box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), int(hit[-1]) + 1 + margin))
    return tuple(box)


def _percentile95(d: np.ndarray) -> float:
    # Linear interpolation, as np.percentile and torch.quantile (MONAI), without their overhead.
    d = np.sort(d)
    pos = 0.95 * (d.size - 1)
    lo = int(pos)
    hi = min(lo + 1, d.size - 1)
    return float(d[lo] + (pos - lo) * (d[hi] - d[lo]))


def _directed(ep: np.ndarray, eg: np.ndarray, sampling: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``ep`` to the nearest of ``eg``, and back.

    Both surfaces lie in the bounding box of their union, so the distance transforms are exact
    when computed in it, and much cheaper than on the whole array.
    """
    box = _box(ep | eg)
    ep, eg = ep[box], eg[box]
    to_gt = ndimage.distance_transform_edt(~eg, sampling=sampling)[ep]
    to_pred = ndimage.distance_transform_edt(~ep, sampling=sampling)[eg]
    return to_gt, to_pred


def _binary_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise BadInputError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
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
    pred, gt = _binary_pair(pred, gt)
    sampling = check_spacing(spacing, pred.ndim)
    if not pred.any() or not gt.any():
        raise BadInputError("surface distances need two non-empty masks")
    axes = range(pred.ndim)
    return _directed(_surface_labels(pred, axes).astype(bool), _surface_labels(gt, axes).astype(bool), sampling)


def hausdorff(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> SurfaceScore:
    """Symmetric Hausdorff distance and HD95 (mm) between two binary masks.

    HD is the largest surface distance (see :func:`surface_distances`) in either direction.
    HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95)``: the 95th percentile
    (linear interpolation) of each directed set of surface distances, then the larger of the
    two; it is *not* the percentile of the pooled distances of both directions.

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
    pred, gt = _binary_pair(pred, gt)
    sampling = check_spacing(spacing, pred.ndim)
    u8 = lambda m: m.view(np.uint8)[None]  # noqa: E731  (bool -> label 1, no copy)
    hd, hd95, codes = _hausdorff_items(u8(pred), u8(gt), np.asarray([sampling]), (1,))
    return SurfaceScore(float(hd[0, 0]), float(hd95[0, 0]), CONVENTION_CODES[codes[0, 0]])


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
    sampling = check_spacing(spacing, pred.ndim)
    hd, hd95, codes = _hausdorff_items(pred[None], gt[None], np.asarray([sampling]), labels)
    return {
        int(k): SurfaceScore(float(hd[0, j]), float(hd95[0, j]), CONVENTION_CODES[codes[0, j]])
        for j, k in enumerate(labels)
    }


def hausdorff_batch(
    pred: np.ndarray,
    gt: np.ndarray,
    spacings: Sequence[float] | np.ndarray,
    labels: Sequence[int] = LABELS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hausdorff distance and HD95 (mm) per slice and label for stacks ``(N, H, W)``.

    Surfaces of all labels of all slices are found in one vectorised pass; only pairs where
    both masks are present reach the distance transforms, on their bounding box.

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
    sp = check_spacings(spacings, n)
    return _hausdorff_items(pred, gt, sp, labels)


def _hausdorff_items(
    pred: np.ndarray, gt: np.ndarray, sp: np.ndarray, labels: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # pred, gt: (N, *spatial) checked label maps; sp: (N, len(spatial)) checked spacings.
    n = pred.shape[0]
    axes = range(pred.ndim - 1)
    idx = np.asarray(labels, dtype=np.intp)
    present = lambda m: np.stack([(m == k).reshape(n, -1).any(axis=1) for k in idx], axis=1)  # noqa: E731
    has_p, has_g = present(pred), present(gt)
    codes = np.where(has_p & has_g, 0, np.where(has_p | has_g, 2, 1)).astype(np.int8)
    hd = np.where(codes == 2, np.nan, 0.0)
    hd95 = hd.copy()
    for i in np.flatnonzero((has_p & has_g).any(axis=1)):
        # Surfaces of all labels at once, in the box of the slice's foreground plus a margin of
        # background (clipped at the array border, which counts as outside anyway).
        box = _box((pred[i] > 0) | (gt[i] > 0), margin=1) if idx.min() > 0 else (slice(None),) * len(axes)
        surf_p, surf_g = _surface_labels(pred[i][box], axes), _surface_labels(gt[i][box], axes)
        for j in np.flatnonzero(has_p[i] & has_g[i]):
            to_gt, to_pred = _directed(surf_p == idx[j], surf_g == idx[j], tuple(sp[i]))
            hd[i, j] = max(float(to_gt.max()), float(to_pred.max()))
            hd95[i, j] = max(_percentile95(to_gt), _percentile95(to_pred))
    return hd, hd95, codes
