"""Minimal anatomical repair: the smallest pixel edits that make a label map anatomically valid.

The NVAE's candidates redraw a slice; where none of them is valid close enough to the input,
the input itself can often be mended by edits that each target one of the 16 criteria
(:mod:`acdctool.metrics.anatomy`) and touch a few pixels:

- holes in a structure are filled with it (where background);
- LV: fragments below a tenth of the largest or more than 10 px from it are dropped, the rest
  replaced by their convex hull (one convex cavity: no LV hole, fragment or concavity);
- MYO: a one-pixel ring (8-neighbours) around the LV is painted MYO wherever it is not (the LV
  then touches neither background nor RV), fragments off that ring are dropped, and the
  epicardium's convexity defects are filled with MYO (no MYO hole or concavity), RV pixels
  included only when they are under a fifth of the RV;
- RV: fragments are bridged to the largest by a 3-pixel-wide segment at their closest points
  (at most 20 px away; farther or below a tenth of the largest, dropped), an RV that does not
  touch the MYO is bridged to it likewise, and background enclosed by the heart (the gap
  between RV and MYO) becomes RV.

A pass is repeated (at most 3) until the slice is valid; the result may still be invalid (e.g.
an RV concavity), which the caller checks. Bridging rather than keeping the largest fragment
matters: on the five-fold out-of-fold UNet masks (README), dropping RV fragments was the main
way such edits lost Dice against the ground truth; the limits below (a fifth, 10 px) were set
on the same masks.

Used by ``refine``'s family ``repair`` (:mod:`acdctool.correct.gate`): the last tier, taken
only where the segmentation's softmax agrees with the repair almost as well as with the input.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import line

from acdctool.config import Choose
from acdctool.conventions import LABEL_OF
from acdctool.correct.scores import Scorer
from acdctool.data.crop_rule import largest_component
from acdctool.metrics import anatomy
from acdctool.metrics.shapes import convex_hull

__all__ = ["repair_slice", "repair_batch", "agreed_repairs"]

RV, MYO, LV = LABEL_OF["rv"], LABEL_OF["myo"], LABEL_OF["lv"]
_SQUARE = np.ones((3, 3), bool)
MIN_FRAGMENT = 0.1
"""Fragments smaller than this fraction of their structure's largest component are dropped."""
MAX_BRIDGE_PX = 20.0
"""Farthest gap (px) that a bridge spans; a farther fragment is dropped."""
MAX_RV_TAKEN = 0.2
"""The epicardium's convexity defects may turn RV pixels into MYO only up to this fraction of
the RV (beyond, the defect is the RV itself: a crescent MYO, not a dent)."""
MAX_LV_JOIN_PX = 10.0
"""LV fragments farther than this (px) from the largest are dropped, not joined by the hull."""
ROUNDS = 3


def _hull(b: np.ndarray) -> np.ndarray:
    return convex_hull(b) if b.any() else b


def _segment(shape: tuple[int, ...], a: tuple[int, int], b: tuple[int, int]) -> np.ndarray:
    """A 3-pixel-wide segment from pixel ``a`` to pixel ``b``."""
    out = np.zeros(shape, bool)
    rr, cc = line(int(a[0]), int(a[1]), int(b[0]), int(b[1]))
    out[rr, cc] = True
    return ndimage.binary_dilation(out, _SQUARE)


def _closest(source: np.ndarray, target: np.ndarray) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """Distance (px) and the two closest pixels of ``source`` and ``target`` (both non-empty)."""
    dist, (ir, ic) = ndimage.distance_transform_edt(~target, return_indices=True)
    rr, cc = np.nonzero(source)
    k = int(np.argmin(dist[rr, cc]))
    r, c = int(rr[k]), int(cc[k])
    return float(dist[r, c]), (r, c), (int(ir[r, c]), int(ic[r, c]))


def _bridge_fragments(out: np.ndarray, label: int) -> None:
    """Join the fragments of ``label`` to its largest through background, or drop them (in place)."""
    lab, n = ndimage.label(out == label, _SQUARE)
    if n <= 1:
        return
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    main_size = sizes.max()
    for c in np.argsort(-sizes)[1:]:
        if sizes[c] == 0:
            break
        piece = lab == c
        main = largest_component(out == label)
        dist, a, b = _closest(piece, main)
        if sizes[c] < MIN_FRAGMENT * main_size or dist > MAX_BRIDGE_PX:
            out[piece] = 0
            continue
        out[_segment(out.shape, a, b) & (out == 0)] = label
    keep = largest_component(out == label)
    out[(out == label) & ~keep] = 0


def _one_pass(out: np.ndarray) -> None:
    lv = out == LV
    if lv.any():
        lab, n = ndimage.label(lv, _SQUARE)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            main = lab == sizes.argmax()
            near = ndimage.distance_transform_edt(~main) <= MAX_LV_JOIN_PX
            for c in np.flatnonzero(sizes):
                piece = lab == c
                if sizes[c] < MIN_FRAGMENT * sizes.max() or not (piece & near).any():
                    out[piece] = 0
                    lv &= ~piece
        lv = _hull(lv)
        out[lv] = LV
        ring = ndimage.binary_dilation(lv, _SQUARE) & ~lv
        out[ring & (out != MYO)] = MYO
        myo = largest_component(out == MYO)
        out[(out == MYO) & ~myo] = 0
        epi = ndimage.binary_fill_holes((out == MYO) | (out == LV))
        add = (_hull(epi) | epi) & ~lv & (out != MYO)
        if np.count_nonzero(add & (out == RV)) > MAX_RV_TAKEN * np.count_nonzero(out == RV):
            add &= out != RV  # the RV lies in the hull's defect: the MYO concavity stays, the RV is kept
        out[add] = MYO
    elif (out == MYO).any():
        _bridge_fragments(out, MYO)
        out[_hull(ndimage.binary_fill_holes(out == MYO)) & (out == 0)] = MYO
    if (out == RV).any():
        _bridge_fragments(out, RV)
        rv, myo = out == RV, out == MYO
        out[ndimage.binary_fill_holes(rv) & (out == 0)] = RV
        if myo.any() and not (ndimage.binary_dilation(rv, _SQUARE) & myo).any():
            _, a, b = _closest(rv, myo)
            out[_segment(out.shape, a, b) & (out == 0)] = RV
        out[ndimage.binary_fill_holes(out > 0) & (out == 0)] = RV


def repair_slice(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The mask after the minimal repairs of the module docstring.

    Args:
        mask: (H, W) uint8 label map (0 background, 1 RV, 2 MYO, 3 LV).
        spacing: (row, col) pixel spacing, mm (for the validity check between passes).

    Returns:
        (H, W) uint8, a new array; check its validity (it may still fail a criterion).

    Example:
        >>> yy, xx = np.mgrid[:40, :40]; r = np.hypot(yy - 20, xx - 20)
        >>> m = np.where(r < 6, 3, np.where(r < 10, 2, 0)).astype(np.uint8)
        >>> m[20, 26:30] = 0  # a cut through the MYO: the LV touches the background
        >>> anatomy.is_valid(m, (1.5, 1.5)), anatomy.is_valid(repair_slice(m, (1.5, 1.5)), (1.5, 1.5))
        (False, True)
        >>> int((repair_slice(m) != m).sum())  # the 4 cut pixels, and 8 making the epicardium convex
        12
    """
    out = np.array(mask, dtype=np.uint8, copy=True)
    for label in (LV, MYO, RV):
        b = out == label
        if b.any():
            out[ndimage.binary_fill_holes(b) & (out == 0)] = label
    for _ in range(ROUNDS):
        _one_pass(out)
        if anatomy.is_valid(out, spacing):
            break
    return out


def repair_batch(masks: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """:func:`repair_slice` over (B, H, W) label maps with (B, 2) spacings (mm)."""
    if len(masks) == 0:
        return np.array(masks, dtype=np.uint8, copy=True)
    return np.stack([repair_slice(m, (float(s[0]), float(s[1]))) for m, s in zip(masks, spacing, strict=True)])


def agreed_repairs(
    masks: np.ndarray, probs: np.ndarray, spacing: np.ndarray, least: float
) -> tuple[np.ndarray, np.ndarray]:
    """Repair every row; keep those the segmentation's softmax agrees with.

    A repair is accepted when it is anatomically valid, differs from the input, keeps some
    structure, and its expected Dice under the softmax (:class:`acdctool.correct.scores.Scorer`,
    ``soft-dice``) is at least ``least`` times the input's own: the edits must not go where
    the network saw something else.

    Args:
        masks: (B, H, W) uint8 label maps (anatomically invalid ones, in the gate).
        probs: (B, 4, H, W) softmax of the segmentation.
        spacing: (B, 2) pixel spacing, mm.
        least: the agreement ratio to reach (0: every valid repair).

    Returns:
        (repaired (B, H, W) uint8, accepted (B,) bool).

    Example:
        >>> yy, xx = np.mgrid[:40, :40]; r = np.hypot(yy - 20, xx - 20)
        >>> m = np.where(r < 6, 3, np.where(r < 10, 2, 0)).astype(np.uint8)[None]
        >>> m[0, 20, 26:30] = 0  # the LV touches the background through a cut MYO
        >>> p = np.eye(4, dtype=np.float32)[m].transpose(0, 3, 1, 2)  # the softmax saw the cut
        >>> [agreed_repairs(m, p, np.ones((1, 2)), least)[1].tolist() for least in (0.9, 1.0)]
        [[True], [False]]
    """
    fixed = repair_batch(masks, spacing)
    if len(masks) == 0:
        return fixed, np.zeros(0, bool)
    flat_f, flat_m = fixed.reshape(len(fixed), -1), masks.reshape(len(masks), -1)
    ok = anatomy.evaluate_batch(fixed, spacing)[1] & (flat_f != flat_m).any(axis=1) & flat_f.any(axis=1)
    scorer = Scorer(Choose.SOFT_DICE.value, masks, probs)
    ok &= scorer.score(fixed) >= least * scorer.score(masks)
    return fixed, np.asarray(ok)
