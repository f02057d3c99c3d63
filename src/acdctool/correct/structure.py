"""Per-structure edits: replace only the structures whose anatomical criteria fail.

Each of the 16 criteria concerns one structure or a pair (:data:`CRITERION_STRUCTURES`): the
holes, fragments, concavity and circularity of a structure concern that structure; a hole
between two structures, the RV–MYO gap and the LV–RV frontier concern both; the LV touching
the background concerns the LV and the MYO (the ring that should separate them).

An edit of an invalid input with a candidate takes, for the failing structures S, the
candidate's S and keeps every other structure bit-identical:

1. every pixel of S in the input becomes background;
2. every pixel the candidate labels with a structure of S takes that label, unless the input
   has a kept structure there: kept structures win every overlap;
3. so a pixel the input gave to S and the candidate gives to a kept structure (or to the
   background) ends as background.

A kept label therefore covers exactly the same pixels before and after. Rows whose failing
criteria name no structure (none do: every criterion is mapped) or whose edit changes nothing
come back equal to the input, which the gate never takes.
"""

from __future__ import annotations

import numpy as np

from acdctool.conventions import BACKGROUND, FOREGROUND, LABEL_OF
from acdctool.metrics import anatomy

_RV, _MYO, _LV = LABEL_OF["rv"], LABEL_OF["myo"], LABEL_OF["lv"]

CRITERION_STRUCTURES: dict[str, tuple[int, ...]] = {
    "holes_in_lv": (_LV,),
    "holes_in_rv": (_RV,),
    "holes_in_myo": (_MYO,),
    "disconnectivity_in_lv": (_LV,),
    "disconnectivity_in_rv": (_RV,),
    "disconnectivity_in_myo": (_MYO,),
    "holes_between_lv_and_myo": (_LV, _MYO),
    "holes_between_rv_and_myo": (_RV, _MYO),
    "rv_disconnected_from_myo": (_RV, _MYO),
    "frontier_between_lv_and_rv": (_LV, _RV),
    "frontier_between_lv_and_background": (_LV, _MYO),
    "lv_concavity": (_LV,),
    "rv_concavity": (_RV,),
    "myo_concavity": (_MYO,),
    "lv_circularity": (_LV,),
    "myo_circularity": (_MYO,),
}
"""Labels (1 RV, 2 MYO, 3 LV) each criterion of :data:`acdctool.metrics.anatomy.CRITERIA` concerns."""

_MATRIX = np.array(
    [[label in CRITERION_STRUCTURES[name] for label in FOREGROUND] for name in anatomy.CRITERIA_NAMES], dtype=bool
)  # (16, 3): criterion × foreground label


def failing_structures(passed: np.ndarray) -> np.ndarray:
    """Which structures to replace, from the pass/fail of the criteria.

    Args:
        passed: (B, 16) bool, :func:`acdctool.metrics.anatomy.criteria_passed`.

    Returns:
        (B, 3) bool over the foreground labels (RV, MYO, LV): concerned by a failing criterion.

    Example:
        >>> passed = np.ones((1, 16), bool); passed[0, anatomy.CRITERIA_NAMES.index("holes_in_lv")] = False
        >>> failing_structures(passed).tolist()
        [[False, False, True]]
    """
    return (~np.asarray(passed, bool)).astype(np.int64) @ _MATRIX.astype(np.int64) > 0


def structure_edits(masks: np.ndarray, candidate: np.ndarray, replace: np.ndarray) -> np.ndarray:
    """The input with only the structures in ``replace`` taken from ``candidate`` (module rules).

    Args:
        masks: (B, H, W) uint8 input label maps.
        candidate: (B, H, W) uint8 label maps to take the replaced structures from.
        replace: (B, 3) bool over RV, MYO, LV (:func:`failing_structures`).

    Returns:
        (B, H, W) uint8, a new array; rows with nothing to replace equal ``masks``.

    Example:
        >>> m = np.array([[[1, 1, 3, 3]]], np.uint8); c = np.array([[[3, 3, 3, 0]]], np.uint8)
        >>> structure_edits(m, c, np.array([[False, False, True]])).tolist()  # LV only; RV kept
        [[[1, 1, 3, 0]]]
    """
    lut = np.zeros((len(masks), 4), bool)  # row × label: replaced?
    lut[:, list(FOREGROUND)] = replace
    rows = np.arange(len(masks))[:, None, None]
    in_s = lut[rows, masks]  # input pixel belongs to a replaced structure
    kept = (masks != BACKGROUND) & ~in_s
    out = np.where(in_s, np.uint8(BACKGROUND), masks)
    take = lut[rows, candidate] & ~kept
    out[take] = candidate[take]
    return out.astype(np.uint8, copy=False)
