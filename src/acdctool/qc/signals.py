"""Per-slice QC signals: what a mask, its probabilities and an NVAE say about its quality.

All functions take stacks of slices and return one value per slice, as columns (name → (N,)
array). Masks are label maps ``(N, H, W)`` (0 background, 1 RV, 2 MYO, 3 LV); class columns
are named with :data:`acdctool.conventions.CLASSES` (``rv``, ``myo``, ``lv``).

==================  =====================================================================
signal              meaning (units)
==================  =====================================================================
``area_<c>``        area of class c in the mask (mm², from the slice's pixel spacing)
``empty``           1 when the mask has no foreground pixel
``valid``           1 when the 16 anatomical criteria pass (:mod:`acdctool.metrics.anatomy`)
``n_failed``        criteria that fail; ``failed`` lists them (``;``-separated)
``entropy_fg``      mean softmax entropy (nats, 0..ln 4) over the mask's foreground pixels
``entropy_band``    mean entropy over a band of ± ``band_px`` px around the mask's boundaries
``margin_fg``       mean top-1 minus top-2 probability over the foreground pixels (0..1)
``uncertain_frac``  Σ over all pixels of (1 − top-1 probability), per foreground pixel
``entropy_<c>``     mean entropy over the pixels the mask gives class c (0 without any)
``mass_<c>``        probability mass of class c: Σ p_c × pixel area (mm²), to set against
                    ``area_<c>`` (a net unsure of a structure puts mass where the mask has none)
``prob_dice_<c>``   soft Dice between the probabilities of class c and the mask (1 px
                    smoothing, so a class absent from both scores 1), and its ``_mean``
                    over classes and ``_min``
``nvae_dice_<c>``   Dice between the mask and its NVAE posterior-mean reconstruction (ACDC
                    conventions: both empty → 1), ``_mean`` and ``_min``
``nvae_nll``        mean −log p_NVAE(mask label) over pixels foreground in either (nats)
==================  =====================================================================

A slice without foreground has ``entropy_fg = entropy_band = 0`` and ``margin_fg = 1`` (no
pixel to average over; ``empty`` says so); the NVAE is not run on it (``nvae_dice_* = 1``,
``nvae_nll = 0``).

Example:
    >>> m = np.zeros((1, 16, 16), np.uint8); m[0, 3:13, 3:13] = 2; m[0, 5:11, 5:11] = 3
    >>> s = mask_signals(m, np.full((1, 2), 1.5))
    >>> float(s["area_lv"][0]), int(s["valid"][0])  # 36 px of 2.25 mm²; LV inside MYO: valid
    (81.0, 1)
    >>> p = np.eye(4, dtype=np.float32)[m].transpose(0, 3, 1, 2)  # certain probabilities
    >>> q = prob_signals(p, m)
    >>> round(float(q["entropy_fg"][0]), 4), round(float(q["prob_dice_lv"][0]), 3)
    (0.0, 1.0)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from acdctool.conventions import CLASSES, FOREGROUND, N_CLASSES
from acdctool.metrics import anatomy, overlap

__all__ = ["mask_signals", "prob_signals", "nvae_signals", "true_dice", "truth_columns", "Columns"]

Columns = dict[str, np.ndarray]
_EPS = 1e-7
SMOOTH_PX = 1.0
"""Smoothing (px) of the soft Dice: with a class absent from the mask, ``1 / (1 + mass)``."""


def mask_signals(masks: np.ndarray, spacing: np.ndarray) -> Columns:
    """Areas (mm²), emptiness and anatomical validity of each mask.

    Args:
        masks: ``(N, H, W)`` label maps.
        spacing: ``(N, 2)`` pixel spacing (row_mm, col_mm).

    Raises:
        BadInputError: labels outside 0..3, wrong shapes or bad spacing.
    """
    masks = overlap.check_label_map(masks, 3, "pred")
    n = len(masks)
    counts = _class_counts(masks)
    px_mm2 = spacing[:, 0] * spacing[:, 1]
    cols: Columns = {f"area_{c}": counts[:, lab] * px_mm2 for c, lab in zip(CLASSES, FOREGROUND, strict=True)}
    cols["empty"] = (counts[:, 1:].sum(axis=1) == 0).astype(np.int8)
    values, valid = anatomy.evaluate_batch(masks, spacing) if n else (np.empty((0, 16)), np.empty(0, bool))
    passed = anatomy.criteria_passed(values) if n else np.empty((0, len(anatomy.CRITERIA)), bool)
    names = np.array(anatomy.CRITERIA_NAMES)
    cols["valid"] = valid.astype(np.int8)
    cols["n_failed"] = (~passed).sum(axis=1).astype(np.int16)
    cols["failed"] = np.array([";".join(names[~row]) for row in passed], dtype=object)
    return cols


def prob_signals(probs: np.ndarray, masks: np.ndarray, band_px: int = 2, px_mm2: np.ndarray | float = 1.0) -> Columns:
    """Uncertainty of the segmentation's softmax, around the mask it produced.

    Args:
        probs: ``(N, 4, H, W)`` class probabilities (any float dtype; float16 in slice files).
        masks: ``(N, H, W)`` the masks they go with.
        band_px: half-width (px) of the band around the mask's boundaries.
        px_mm2: pixel area (mm²), one per slice or one for all (for ``mass_<c>``).
    """
    p = np.clip(probs.astype(np.float32), _EPS, 1.0)
    ent = -(p * np.log(p)).sum(axis=1)  # (N, H, W) nats
    top1, top2 = _top2(p)
    margin = top1 - top2
    fg = masks > 0
    n_fg = fg.sum(axis=(1, 2))
    band = boundary_band(masks, band_px)
    n_band = band.sum(axis=(1, 2))
    cols: Columns = {
        "entropy_fg": _masked_mean(ent, fg, n_fg, 0.0),
        "entropy_band": _masked_mean(ent, band, n_band, 0.0),
        "margin_fg": _masked_mean(margin, fg, n_fg, 1.0),
        "uncertain_frac": (1.0 - top1).sum(axis=(1, 2)) / np.maximum(n_fg, 1),
    }
    dices = []
    for c, lab in zip(CLASSES, FOREGROUND, strict=True):
        pc = p[:, lab]
        own = masks == lab
        n_own = own.sum(axis=(1, 2))
        inter = (pc * own).sum(axis=(1, 2))
        mass = pc.sum(axis=(1, 2))
        d = (2 * inter + SMOOTH_PX) / (mass + n_own + SMOOTH_PX)
        cols[f"prob_dice_{c}"] = d
        cols[f"entropy_{c}"] = _masked_mean(ent, own, n_own, 0.0)
        cols[f"mass_{c}"] = mass * px_mm2
        dices.append(d)
    stack = np.stack(dices, axis=1)
    cols["prob_dice_mean"], cols["prob_dice_min"] = stack.mean(axis=1), stack.min(axis=1)
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def nvae_signals(masks: np.ndarray, recon: np.ndarray, logp_mask: np.ndarray) -> Columns:
    """Agreement of each mask with its NVAE reconstruction.

    Args:
        masks: ``(N, H, W)`` the masks.
        recon: ``(N, H, W)`` the NVAE's posterior-mean labels.
        logp_mask: ``(N, H, W)`` log-probability the NVAE gives each pixel's mask label.
    """
    dice, _ = overlap.dice_batch(recon, masks)
    cols: Columns = {f"nvae_dice_{c}": dice[:, j] for j, c in enumerate(CLASSES)}
    cols["nvae_dice_mean"], cols["nvae_dice_min"] = dice.mean(axis=1), dice.min(axis=1)
    union = (masks > 0) | (recon > 0)
    cols["nvae_nll"] = _masked_mean(-logp_mask, union, union.sum(axis=(1, 2)), 0.0)
    return cols


def empty_nvae_signals(n: int) -> Columns:
    """NVAE signals of ``n`` masks without foreground (not run through the NVAE)."""
    cols: Columns = {f"nvae_dice_{c}": np.ones(n) for c in CLASSES}
    cols.update(nvae_dice_mean=np.ones(n), nvae_dice_min=np.ones(n), nvae_nll=np.zeros(n))
    return cols


def true_dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mean Dice over RV, MYO, LV of each slice, ACDC conventions (both empty → 1): ``(N,)``."""
    return overlap.dice_batch(pred, gt)[0].mean(axis=1)


def truth_columns(pred: np.ndarray, gt: np.ndarray) -> Columns:
    """What the QC learns from when ground truth exists (never a signal): ``gt_dice`` (mean
    over classes), ``gt_dice_<c>`` (ACDC conventions), ``gt_has_<c>`` (1 when the ground
    truth holds class c), and for the volume Dice (:mod:`acdctool.qc.volume_dice`)
    ``gt_overlap_px_<c>`` (``|P∩G|``, px) and ``gt_sum_px_<c>`` (``|P| + |G|``, px)."""
    dice, _ = overlap.dice_batch(pred, gt)
    counts = _class_counts(overlap.check_label_map(gt, 3, "gt"))
    pred_counts = _class_counts(pred)
    both = _class_counts(np.where(pred == gt, gt, 0))
    cols: Columns = {"gt_dice": dice.mean(axis=1)}
    for j, (c, lab) in enumerate(zip(CLASSES, FOREGROUND, strict=True)):
        cols[f"gt_dice_{c}"] = dice[:, j]
        cols[f"gt_has_{c}"] = (counts[:, lab] > 0).astype(np.int8)
        cols[f"gt_overlap_px_{c}"] = both[:, lab]
        cols[f"gt_sum_px_{c}"] = pred_counts[:, lab] + counts[:, lab]
    return cols


def boundary_band(masks: np.ndarray, band_px: int) -> np.ndarray:
    """Pixels within ``band_px`` px (chessboard) of a label change of the mask: bool ``(N, H, W)``.

    A pixel is on a boundary when a 4-neighbour inside the image has another label, so a
    mask without foreground has no band.
    """
    m = masks
    edge = np.zeros(m.shape, bool)
    diff_r = m[:, 1:, :] != m[:, :-1, :]
    diff_c = m[:, :, 1:] != m[:, :, :-1]
    edge[:, 1:, :] |= diff_r
    edge[:, :-1, :] |= diff_r
    edge[:, :, 1:] |= diff_c
    edge[:, :, :-1] |= diff_c
    if band_px <= 0:
        return edge
    k = 2 * band_px + 1
    return ndimage.maximum_filter(edge, size=(1, k, k), mode="constant", cval=False)


def _top2(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and second largest value along axis 1 of ``(N, C, H, W)``.

    For the usual 4 classes a sorting network (max/min of pairs) is ~5× faster than
    ``np.sort`` over the strided channel axis.
    """
    if p.shape[1] != 4:
        top = np.sort(p, axis=1)
        return top[:, -1], top[:, -2]
    a, b, c, d = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    hi1, lo1 = np.maximum(a, b), np.minimum(a, b)
    hi2, lo2 = np.maximum(c, d), np.minimum(c, d)
    return np.maximum(hi1, hi2), np.maximum(np.minimum(hi1, hi2), np.maximum(lo1, lo2))


def _class_counts(masks: np.ndarray) -> np.ndarray:
    n = len(masks)
    flat = masks.reshape(n, -1).astype(np.int64) + (np.arange(n, dtype=np.int64) * N_CLASSES)[:, None]
    return np.bincount(flat.ravel(), minlength=n * N_CLASSES).reshape(n, N_CLASSES)


def _masked_mean(values: np.ndarray, where: np.ndarray, count: np.ndarray, default: float) -> np.ndarray:
    total = np.where(where, values, 0.0).sum(axis=(1, 2))
    return np.where(count > 0, total / np.maximum(count, 1), default).astype(np.float64)
