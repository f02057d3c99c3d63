"""The empty slice: the last-resort correction of an unconfident slice at either end of its stack.

An empty mask passes every anatomical criterion, so the gate never takes one as a candidate
(:func:`acdctool.correct.gate.closest_valid`): an empty replacement would "fix" any slice. But
at the two ends of a short-axis stack the right answer often is the empty slice: the
segmentation drew structures above the base or below the apex, where the ground truth has
none. There the network's own softmax says so: on the five-fold out-of-fold UNet masks
(README), of the slices that no other candidate made valid, those at a stack end whose
foreground the network labelled with a mean probability below 0.75 were mostly beyond the
heart (emptying them: 11 better by > 0.05, 1 worse, of 13). Family ``empty`` (a fallback
only, after every other tier) empties exactly those slices: it needs the segmentation's
``probs`` and the rows' positions in their stack.
"""

from __future__ import annotations

import numpy as np

from acdctool.conventions import N_CLASSES

__all__ = ["foreground_confidence", "stack_ends", "unconfident_ends"]


def stack_ends(slices: np.ndarray, n_slices: np.ndarray) -> np.ndarray:
    """(B,) bool: rows that are the first or the last slice of their stack.

    Args:
        slices: (B,) 0-based slice index of each row in its stack.
        n_slices: (B,) number of slices of each row's stack.

    Example:
        >>> stack_ends(np.array([0, 1, 2, 0]), np.array([3, 3, 3, 1])).tolist()
        [True, False, True, True]
    """
    s, n = np.asarray(slices, dtype=np.int64), np.asarray(n_slices, dtype=np.int64)
    return np.asarray((s == 0) | (s == n - 1))


def foreground_confidence(masks: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per row, the mean softmax probability of the mask's own label over its foreground pixels.

    Args:
        masks: (B, H, W) label maps (0 background).
        probs: (B, 4, H, W) softmax of the segmentation, any float dtype.

    Returns:
        (B,) float64 in [0, 1]; 1.0 for a row without foreground (nothing to doubt).

    Raises:
        ValueError: ``probs`` is not (B, 4, H, W) over the masks' rows and pixels.

    Example:
        >>> m = np.array([[[0, 3], [3, 0]], [[0, 0], [0, 0]]], np.uint8)
        >>> p = np.zeros((2, 4, 2, 2), np.float32); p[:, 0] = 1; p[0, :, 0, 1] = [0.4, 0, 0, 0.6]
        >>> p[0, :, 1, 0] = [0.2, 0, 0, 0.8]
        >>> foreground_confidence(m, p).round(2).tolist()
        [0.7, 1.0]
    """
    if probs.ndim != 4 or probs.shape[1] != N_CLASSES or probs.shape[:1] + probs.shape[2:] != masks.shape:
        raise ValueError(f"probs must be (B, {N_CLASSES}, H, W) over masks {masks.shape}, got {probs.shape}")
    labels = masks.astype(np.int64)[:, None]
    own = np.take_along_axis(np.asarray(probs, dtype=np.float32), labels, axis=1)[:, 0]
    fg = masks > 0
    count = fg.reshape(len(masks), -1).sum(axis=1)
    total = np.where(fg, own, 0.0).reshape(len(masks), -1).sum(axis=1, dtype=np.float64)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def unconfident_ends(masks: np.ndarray, probs: np.ndarray, ends: np.ndarray, below: float) -> np.ndarray:
    """(B,) bool: rows to empty: at a stack end, with foreground labelled with confidence < ``below``.

    Args:
        masks: (B, H, W) label maps.
        probs: (B, 4, H, W) softmax of the segmentation.
        ends: (B,) bool, rows at either end of their stack (:func:`stack_ends`).
        below: confidence threshold in [0, 1] (:func:`foreground_confidence`); 0 empties nothing.

    Example:
        >>> m = np.ones((2, 2, 2), np.uint8); p = np.zeros((2, 4, 2, 2), np.float32)
        >>> p[:, 0], p[:, 1] = 0.4, 0.6  # every RV pixel at probability 0.6
        >>> unconfident_ends(m, p, np.array([True, False]), 0.75).tolist()
        [True, False]
    """
    if below <= 0 or len(masks) == 0:
        return np.zeros(len(masks), dtype=bool)
    has_fg = masks.reshape(len(masks), -1).any(axis=1)
    return np.asarray(np.asarray(ends, dtype=bool) & has_fg & (foreground_confidence(masks, probs) < below))
