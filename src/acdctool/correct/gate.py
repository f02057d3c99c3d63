"""The anatomy gate (after Painchaud et al.): keep what is anatomically valid, replace what is not.

An anatomically valid slice (the 16 criteria of :mod:`acdctool.metrics.anatomy`) is kept
bit-identical; an invalid one is replaced by the anatomically valid candidate that agrees best
with the segmentation (a :class:`acdctool.correct.scores.Scorer` rule: the input mask, or the
segmentation's softmax), among those scoring at least ``min_agreement``; if none qualifies the
input is kept. Candidates come from a :data:`Proposer`: the NVAE
(:class:`acdctool.correct.nvae_proposer.NvaeProposer`) or the morphological clean-up
(:mod:`acdctool.correct.morph`); the gate adds per-structure edits of them
(:mod:`acdctool.correct.structure`) and, for the NVAE method with the segmentation's softmax,
its smoothed argmax (:mod:`acdctool.correct.smooth`, family ``smooth``). Used by ``refine``
(whose docstring states the rules in full) and ``predict --nvae``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from acdctool.config import Family, Gate, RefineConfig
from acdctool.correct.empty import unconfident_ends
from acdctool.correct.repair import agreed_repairs
from acdctool.correct.scores import Scorer
from acdctool.correct.smooth import smoothed_candidates
from acdctool.correct.structure import failing_structures, structure_edits
from acdctool.metrics import anatomy, overlap

REASONS = ("valid-kept", "corrected", "no-valid-candidate", "ungated")
"""What the gate did with a row: kept a valid one, replaced an invalid one, kept an invalid one
(no valid candidate qualified), replaced every row (``gate="none"``)."""


@dataclass
class Candidates:
    """Candidate label maps for one batch, with what each is.

    Attributes:
        arrays: K arrays (B, H, W) uint8.
        names: e.g. ``recon``, ``partial 0.05``, ``latent 0.5``, ``sample 2``, ``recon+polish``.
        families: ``recon``, ``partial``, ``latent``, ``samples``, ``structure``, ``morph``,
            ``<family>+polish``.
        offered: whether the gate may choose it (else only a source of per-structure edits).
        source: whether per-structure edits take structures from it.
        tier: 0, or 1 for a fallback (chosen only where no tier-0 candidate is valid).

    Example:
        >>> c = Candidates(); c.add(np.zeros((1, 2, 2), np.uint8), "recon", "recon", source=True)
        >>> len(c), c.names, c.offered, c.source, c.tier
        (1, ['recon'], [True], [True], [0])
    """

    arrays: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    offered: list[bool] = field(default_factory=list)
    source: list[bool] = field(default_factory=list)
    tier: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrays)

    def add(
        self, array: np.ndarray, name: str, family: str, *, offered: bool = True, source: bool = False, tier: int = 0
    ) -> None:
        self.arrays.append(array)
        self.names.append(name)
        self.families.append(family)
        self.offered.append(offered)
        self.source.append(source)
        self.tier.append(tier)

    def extend(self, other: Candidates) -> None:
        """Append every candidate of ``other``, in order."""
        for k in range(len(other)):
            self.add(
                other.arrays[k],
                other.names[k],
                other.families[k],
                offered=other.offered[k],
                source=other.source[k],
                tier=other.tier[k],
            )

    @classmethod
    def of(cls, proposed: Candidates | Sequence[np.ndarray]) -> Candidates:
        """A proposer's answer as :class:`Candidates` (a plain list: family ``candidate``)."""
        if isinstance(proposed, Candidates):
            return proposed
        out = cls()
        for k, array in enumerate(proposed):
            out.add(array, f"candidate {k}", "candidate")
        return out


Proposer = Callable[[np.ndarray, np.ndarray | None], "Candidates | list[np.ndarray]"]
"""(masks (B, H, W), context (B, 3, H, W) or None) → candidates (:class:`Candidates`, or a
plain list of (B, H, W) label maps); the first replaces every slice under ``gate="none"``."""


@dataclass
class GateResult:
    """One batch through the gate.

    Attributes:
        refined: (B, H, W) uint8.
        reasons: per row, one of :data:`REASONS`.
        valid_in, valid_out: (B,) bool, anatomical validity of input and output.
        names, families: per row, the chosen candidate's name and family ("" where kept).
        scores: (B,) float64, the ``choose`` rule's score of the output.
    """

    refined: np.ndarray
    reasons: list[str]
    valid_in: np.ndarray
    valid_out: np.ndarray
    names: list[str]
    families: list[str]
    scores: np.ndarray


def pooled(proposers: Sequence[Proposer]) -> Proposer:
    """One proposer offering every candidate of several (e.g. one per NVAE), in order.

    Example:
        >>> both = pooled([lambda m, c: [m + 1], lambda m, c: [m + 2]])
        >>> [c.tolist() for c in both(np.zeros(1, np.uint8), None).arrays]
        [[1], [2]]
    """

    def propose(masks: np.ndarray, context: np.ndarray | None) -> Candidates:
        out = Candidates()
        for p in proposers:
            out.extend(Candidates.of(p(masks, context)))
        return out

    return propose


def gate(
    masks: np.ndarray,
    context: np.ndarray | None,
    spacing: np.ndarray,
    propose: Proposer,
    config: RefineConfig,
    probs: np.ndarray | None = None,
    fallback_rows: np.ndarray | None = None,
    stack_ends: np.ndarray | None = None,
) -> GateResult:
    """Apply the gate to one batch (rules in the module docstring and :mod:`acdctool.stages.refine`).

    Args:
        masks: (B, H, W) uint8 input label maps.
        context: (B, 3, H, W) 3-gram context, or None.
        spacing: (B, 2) pixel spacing, mm.
        propose: candidates for a sub-batch; the first is the ``gate="none"`` replacement.
        config: gate, choice, candidate families, minimum agreement.
        probs: (B, 4, H, W) softmax of the segmentation, needed by ``choose`` other than ``mask``;
            also the source of the ``smooth`` family (skipped when None).
        fallback_rows: (B,) bool, the rows the fallback tier may correct (e.g. not the mid
            slices, ``config.fallback_positions``); None: every row.
        stack_ends: (B,) bool, the rows at either end of their stack, the only ones family
            ``empty`` may empty (:func:`acdctool.correct.empty.stack_ends`); None: no row.

    Returns:
        :class:`GateResult`.

    Raises:
        BadInputError: ``config.choose`` needs ``probs`` and none (or of the wrong shape) is given.

    Example:
        >>> yy, xx = np.mgrid[:32, :32]; r = np.hypot(yy - 16, xx - 16)
        >>> ok = np.where(r < 6, 3, np.where(r < 10, 2, 0)).astype(np.uint8)  # LV in a MYO ring
        >>> m = np.stack([ok, np.zeros_like(ok)]); m[0, 16, 16] = 0  # row 0: a hole in the LV (invalid)
        >>> g = gate(m, None, np.ones((2, 2)), lambda b, c: [ok[None].repeat(len(b), 0)], RefineConfig())
        >>> g.reasons, g.families, int(g.refined[0, 16, 16])  # the filled LV replaces the invalid row
        (['corrected', 'valid-kept'], ['candidate', ''], 3)
        >>> g = gate(m, None, np.ones((2, 2)), lambda b, c: [np.zeros_like(b)], RefineConfig())
        >>> g.reasons  # an empty mask is "valid", but never replaces a slice that has structures
        ['no-valid-candidate', 'valid-kept']
    """
    values, valid = anatomy.evaluate_batch(masks, spacing)
    n = len(masks)
    names, families = [""] * n, [""] * n
    if config.gate == Gate.NONE.value:
        cands = Candidates.of(propose(masks, context))
        out = cands.arrays[0].astype(np.uint8)
        emptied = _emptied(out, masks)
        out[emptied] = masks[emptied]  # never wipe out every structure of a slice that had them
        score = Scorer(config.choose, masks, probs).score(out)
        return GateResult(
            out,
            ["no-valid-candidate" if e else "ungated" for e in emptied],
            valid,
            anatomy.evaluate_batch(out, spacing)[1],
            [cands.names[0]] * n,
            [cands.families[0]] * n,
            score,
        )
    out = masks.copy()
    valid_out = valid.copy()
    reasons = ["valid-kept" if v else "no-valid-candidate" for v in valid]
    todo = np.flatnonzero(~valid)
    scorer = Scorer(config.choose, masks, probs)
    if todo.size:
        sub = masks[todo]
        cands = Candidates.of(propose(sub, None if context is None else context[todo]))
        smooth = probs is not None and Family.SMOOTH.value in config.softmax_families
        smooth_tier = int(Family.SMOOTH.value in config.fallback)
        if smooth and smooth_tier == 0:
            _add_smooth(cands, probs, todo, np.arange(len(todo)), config, tier=0)
        if Family.STRUCTURE.value in config.families and any(cands.source):
            replace = failing_structures(anatomy.criteria_passed(values[todo]))
            structure_tier = int(Family.STRUCTURE.value in config.fallback)
            for k in [k for k in range(len(cands)) if cands.source[k]]:
                edit = structure_edits(sub, cands.arrays[k], replace)
                if cands.offered[k]:  # an edit equal to its offered source would only be checked twice
                    same = (edit == cands.arrays[k]).all(axis=(1, 2))
                    edit[same] = sub[same]  # equal to the input: never taken
                tier = max(structure_tier, cands.tier[k])
                cands.add(edit, f"structure<{cands.names[k]}>", Family.STRUCTURE.value, tier=tier)
        rows = np.arange(len(todo))
        tiers = {cands.tier[k] for k in range(len(cands)) if cands.offered[k]} | ({smooth_tier} if smooth else set())
        for tier in sorted(tiers):
            # a fallback tier only sees the rows that no earlier tier could correct
            if tier > 0 and fallback_rows is not None:
                rows = rows[fallback_rows[todo[rows]]]
            if smooth and tier == smooth_tier > 0 and rows.size:
                _add_smooth(cands, probs, todo, rows, config, tier=tier)  # only for the rows that reach it
            offered = [k for k in range(len(cands)) if cands.offered[k] and cands.tier[k] == tier]
            if rows.size == 0 or not offered:
                continue
            arrays = [cands.arrays[k][rows] for k in offered]
            rows_scorer = Scorer(config.choose, sub[rows], None if probs is None else probs[todo[rows]])
            choice = closest_valid(
                sub[rows],
                arrays,
                spacing[todo[rows]],
                config.min_agreement,
                scores=rows_scorer.matrix(arrays),
                min_structure_dice=config.min_structure_dice,
            )
            for j, k in enumerate(choice):
                if k >= 0:
                    i = todo[rows[j]]
                    out[i] = arrays[k][j]
                    reasons[i] = "corrected"
                    valid_out[i] = True
                    names[i], families[i] = cands.names[offered[k]], cands.families[offered[k]]
            rows = rows[choice < 0]
        if Family.EMPTY.value in config.softmax_families and probs is not None and stack_ends is not None:
            # the last tier: an empty mask is no candidate (closest_valid), but at a stack end
            # with doubtful evidence it is the likeliest truth (acdctool.correct.empty)
            left = todo[~valid_out[todo]]
            if fallback_rows is not None:
                left = left[fallback_rows[left]]
            emptied = left[unconfident_ends(masks[left], probs[left], stack_ends[left], config.empty_confidence)]
            out[emptied] = 0
            valid_out[emptied] = True
            for i in emptied:
                reasons[i], names[i], families[i] = "corrected", Family.EMPTY.value, Family.EMPTY.value
        if Family.REPAIR.value in config.softmax_families and probs is not None:
            # the very last tier, at every position (its guard is the softmax's agreement):
            # mend the input itself where no candidate made it valid (acdctool.correct.repair)
            rest = todo[~valid_out[todo]]
            fixed, ok = agreed_repairs(masks[rest], probs[rest], spacing[rest], config.repair_agreement)
            out[rest[ok]], valid_out[rest[ok]] = fixed[ok], True
            for i in rest[ok]:
                reasons[i], names[i], families[i] = "corrected", Family.REPAIR.value, Family.REPAIR.value
    return GateResult(out, reasons, valid, valid_out, names, families, scorer.score(out))


def _add_smooth(
    cands: Candidates, probs: np.ndarray | None, todo: np.ndarray, rows: np.ndarray, config: RefineConfig, tier: int
) -> None:
    """Add the ``smooth`` candidates, made for ``rows`` of the gated sub-batch only (the
    smoothing is most of their cost); other rows hold background, never read by this tier."""
    assert probs is not None
    made = smoothed_candidates(probs[todo[rows]], config.smooth)
    for sigma, array in zip(config.smooth, made, strict=True):
        full = np.zeros((len(todo), *array.shape[1:]), np.uint8)
        full[rows] = array
        cands.add(full, f"smooth {sigma:g}", Family.SMOOTH.value, tier=tier)


def closest_valid(
    masks: np.ndarray,
    candidates: list[np.ndarray],
    spacing: np.ndarray,
    min_agreement: float = 0.0,
    scores: np.ndarray | None = None,
    min_structure_dice: float = 0.0,
) -> np.ndarray:
    """Per row, the anatomically valid candidate that agrees best with the input.

    Candidates are checked lazily, best score first, so a row costs as many anatomy checks
    as candidates it rejects (usually one or two), not one per candidate; the result is the
    same as checking all. Ties go to the earlier candidate. A candidate identical to the
    (invalid) input is never taken, nor one that removes every structure (all background) of
    an input that has some: an empty mask is anatomically "valid", but it is no correction (a
    broken model, e.g. NaN logits, would otherwise erase every slice it touches).

    Args:
        masks: (B, H, W) input label maps, all anatomically invalid.
        candidates: K arrays (B, H, W), candidate label maps.
        spacing: (B, 2) pixel spacing, mm.
        min_agreement: least score for a candidate to be taken.
        scores: (B, K) agreement of each candidate (higher is better, e.g.
            :class:`acdctool.correct.scores.Scorer`); default: mean Dice with the input.
        min_structure_dice: least Dice with the input of every structure that both the input
            and the candidate hold (a structure removed or added is not limited by it).

    Returns:
        (B,) int64: index into ``candidates`` of the chosen one, −1 where none qualifies.

    Example:
        >>> yy, xx = np.mgrid[:32, :32]; r = np.hypot(yy - 16, xx - 16)
        >>> ok = np.where(r < 6, 3, np.where(r < 10, 2, 0)).astype(np.uint8)[None]  # LV in a MYO ring
        >>> m = ok.copy(); m[0, 16, 16] = 0  # a hole in the LV: anatomically invalid
        >>> empty = np.zeros_like(m)  # "valid", but it erases every structure: never admissible
        >>> closest_valid(m, [m.copy(), empty, ok], np.ones((1, 2))).tolist()
        [2]
        >>> closest_valid(m, [empty, ok], np.ones((1, 2)), min_agreement=0.9999).tolist()
        [-1]
        >>> half = ok.copy(); half[0, :16][half[0, :16] == 3] = 2  # valid, but half the LV gone
        >>> prefer_half = np.array([[1.0, 0.5]])
        >>> closest_valid(m, [half, ok], np.ones((1, 2)), scores=prefer_half).tolist()
        [0]
        >>> closest_valid(m, [half, ok], np.ones((1, 2)), scores=prefer_half, min_structure_dice=0.8).tolist()
        [1]
    """
    n = len(masks)
    choice = np.full(n, -1, dtype=np.int64)
    if n == 0 or not candidates:
        return choice
    if scores is None:
        agreement = np.stack([overlap.dice_batch(c, masks)[0].mean(axis=1) for c in candidates], axis=1)
    else:
        agreement = np.array(scores, dtype=np.float64, copy=True)
    unchanged = np.stack([(c == masks).all(axis=(1, 2)) for c in candidates], axis=1)
    emptied = np.stack([_emptied(c, masks) for c in candidates], axis=1)
    rejected = unchanged | emptied | (agreement < min_agreement) | np.isnan(agreement)
    if min_structure_dice > 0:
        rejected |= np.stack([_loses_part_of_a_structure(c, masks, min_structure_dice) for c in candidates], axis=1)
    agreement[rejected] = -np.inf
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


def _loses_part_of_a_structure(candidate: np.ndarray, masks: np.ndarray, least: float) -> np.ndarray:
    """(B,) bool: rows where a structure in both agrees with the input's below ``least`` (Dice)."""
    values, codes = overlap.dice_batch(candidate, masks)
    both = np.asarray(codes) == overlap.CONVENTION_CODES.index(overlap.Convention.NORMAL)
    return np.asarray((both & (values < least)).any(axis=1))


def _emptied(candidate: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(B,) bool: rows where ``candidate`` is all background but ``masks`` is not."""
    flat_c, flat_m = candidate.reshape(len(candidate), -1), masks.reshape(len(masks), -1)
    return np.asarray(~flat_c.any(axis=1) & flat_m.any(axis=1))


def merge_results(parts: Sequence[tuple[np.ndarray, GateResult]], n: int) -> GateResult:
    """Gate results of sub-batches (rows ``sel`` each) back into one batch of ``n`` rows.

    Used where rows of one batch go through different proposers (e.g. one NVAE per fold).

    Example:
        >>> def one(v):
        ...     return GateResult(np.full((1, 2, 2), v, np.uint8), ["valid-kept"], np.ones(1, bool),
        ...                       np.ones(1, bool), [""], [""], np.ones(1))
        >>> merge_results([(np.array([1]), one(7)), (np.array([0]), one(5))], 2).refined[:, 0, 0].tolist()
        [5, 7]
    """
    if len(parts) == 1 and len(parts[0][0]) == n:
        return parts[0][1]
    first = parts[0][1]
    out = GateResult(
        np.empty((n, *first.refined.shape[1:]), np.uint8),
        [""] * n,
        np.zeros(n, bool),
        np.zeros(n, bool),
        [""] * n,
        [""] * n,
        np.zeros(n),
    )
    for sel, g in parts:
        out.refined[sel], out.valid_in[sel], out.valid_out[sel], out.scores[sel] = (
            g.refined,
            g.valid_in,
            g.valid_out,
            g.scores,
        )
        for j, i in enumerate(sel):
            out.reasons[i], out.names[i], out.families[i] = g.reasons[j], g.names[j], g.families[j]
    return out
