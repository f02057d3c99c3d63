"""The anatomy gate (after Painchaud et al.): keep what is anatomically valid, replace what is not.

An anatomically valid slice (the 16 criteria of :mod:`acdctool.metrics.anatomy`) is kept
bit-identical; an invalid one is replaced by the candidate that is anatomically valid and
closest (mean Dice) to the input; if no candidate qualifies the input is kept. Candidates come
from a :data:`Proposer`: the NVAE (:class:`acdctool.correct.nvae_proposer.NvaeProposer`) or the
morphological clean-up (:mod:`acdctool.correct.morph`). Used by ``refine`` and ``predict --nvae``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from acdctool.config import Gate, RefineConfig
from acdctool.metrics import anatomy, overlap

Proposer = Callable[[np.ndarray, np.ndarray | None], list[np.ndarray]]
"""(masks (B, H, W), context (B, 3, H, W) or None) → candidate label maps, each (B, H, W)."""


def pooled(proposers: Sequence[Proposer]) -> Proposer:
    """One proposer offering every candidate of several (e.g. one per NVAE), in order.

    Example:
        >>> both = pooled([lambda m, c: [m + 1], lambda m, c: [m + 2]])
        >>> [c.tolist() for c in both(np.zeros(1, np.uint8), None)]
        [[1], [2]]
    """
    return lambda masks, context: [c for propose in proposers for c in propose(masks, context)]


def gate(
    masks: np.ndarray, context: np.ndarray | None, spacing: np.ndarray, propose: Proposer, config: RefineConfig
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Apply the gate to one batch.

    Returns:
        (refined (B, H, W) uint8, reason per row, input valid (B,) bool, output valid (B,) bool).
    """
    _, valid = anatomy.evaluate_batch(masks, spacing)
    if config.gate == Gate.NONE.value:
        out = propose(masks, context)[0].astype(np.uint8)
        return out, ["ungated"] * len(masks), valid, anatomy.evaluate_batch(out, spacing)[1]
    out = masks.copy()
    valid_out = valid.copy()
    reasons = ["valid-kept" if v else "no-valid-candidate" for v in valid]
    todo = np.flatnonzero(~valid)
    if todo.size == 0:
        return out, reasons, valid, valid_out
    candidates = propose(masks[todo], None if context is None else context[todo])
    choice = closest_valid(masks[todo], candidates, spacing[todo], config.min_agreement)
    for j, (i, k) in enumerate(zip(todo, choice, strict=False)):
        if k >= 0:
            out[i] = candidates[k][j]
            reasons[i] = "corrected"
            valid_out[i] = True
    return out, reasons, valid, valid_out


def closest_valid(
    masks: np.ndarray, candidates: list[np.ndarray], spacing: np.ndarray, min_agreement: float = 0.0
) -> np.ndarray:
    """Per row, the anatomically valid candidate that agrees best (mean Dice) with the input.

    Candidates are checked lazily, best agreement first, so a row costs as many anatomy
    checks as candidates it rejects (usually one or two), not one per candidate; the result
    is the same as checking all. Ties go to the earlier candidate. A candidate identical to
    the (invalid) input is never taken.

    Args:
        masks: (B, H, W) input label maps, all anatomically invalid.
        candidates: K arrays (B, H, W), candidate label maps.
        spacing: (B, 2) pixel spacing, mm.
        min_agreement: least mean Dice with the input for a candidate to be taken.

    Returns:
        (B,) int64: index into ``candidates`` of the chosen one, −1 where none qualifies.

    Example:
        >>> m = np.zeros((1, 8, 8), np.uint8); m[0, 2:6, 2:6] = 3; m[0, 3, 3] = 0  # LV with a hole
        >>> empty = np.zeros_like(m)  # valid, mean Dice 2/3 with m (RV, MYO both empty)
        >>> closest_valid(m, [m.copy(), empty], np.ones((1, 2))).tolist()
        [1]
        >>> closest_valid(m, [m.copy(), empty], np.ones((1, 2)), min_agreement=0.9).tolist()
        [-1]
    """
    n = len(masks)
    choice = np.full(n, -1, dtype=np.int64)
    if n == 0 or not candidates:
        return choice
    agreement = np.stack([overlap.dice_batch(c, masks)[0].mean(axis=1) for c in candidates], axis=1)
    unchanged = np.stack([(c == masks).all(axis=(1, 2)) for c in candidates], axis=1)
    agreement[unchanged | (agreement < min_agreement)] = -np.inf
    order = np.argsort(-agreement, axis=1, kind="stable")
    pending = np.arange(n)
    for rank in range(len(candidates)):
        k = order[pending, rank]
        admissible = np.isfinite(agreement[pending, k])
        pending, k = pending[admissible], k[admissible]  # the rest have no candidate left
        if pending.size == 0:
            break
        cand = np.stack([candidates[j][i] for i, j in zip(pending, k, strict=False)])
        ok = anatomy.evaluate_batch(cand, spacing[pending])[1]
        choice[pending[ok]] = k[ok]
        pending = pending[~ok]
    return choice
