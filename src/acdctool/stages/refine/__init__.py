"""``refine``: correct segmentations with the NVAE (or the morphological baseline), gated.

Gate ``anatomy`` (after Painchaud et al.): a slice that passes the 16 anatomical criteria is
kept bit-identical; an invalid one is replaced by the candidate that is anatomically valid and
closest (mean Dice) to the input, among the NVAE's posterior-mean reconstruction and
``samples`` sampled decodings (or the morphological clean-up). If no candidate is valid, the
input is kept: the corrector never trades a plausible-looking error for a different one.
Only invalid slices go through the NVAE, so a good segmentation costs one validity check.

Every output row records ``refine_changed``, ``refine_reason`` and ``refine_agreement``
(mean Dice between output and input).

The candidates come from :mod:`.nvae_proposer` (the NVAE) or :mod:`.morph` (the baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.config import Context, Gate, Method, RefineConfig, config_to_dict
from acdctool.errors import BadInputError, ConfigError, FileKindError
from acdctool.io.slices import INDEX_COLUMNS, SliceFile, SliceWriter
from acdctool.metrics import anatomy, overlap
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance
from acdctool.stages.refine import morph

REASONS = ("valid-kept", "corrected", "no-valid-candidate", "ungated")
COLUMNS = {"refine_changed": "int8", "refine_reason": "str", "refine_agreement": "float32"}

Proposer = Callable[[np.ndarray, np.ndarray | None], list[np.ndarray]]
"""(masks (B, H, W), context (B, 3, H, W) or None) → candidate label maps, each (B, H, W)."""


@dataclass(frozen=True)
class Inputs:
    """What refine reads."""

    seg: Path
    """gen-seg output (kind ``seg``), make-3gram output (kind ``3gram``, required by
    ``context="3gram"``), or a previous refine output."""
    nvae: Path | None = None
    """NVAE checkpoint (train-nvae ``best.pt``), needed by ``method="nvae"``."""
    provenance: Provenance | None = None
    """Stored in the file; None: made here, without a command line."""


@dataclass
class Result:
    """What refine wrote: rows, rows per reason, anatomically invalid slices before and after."""

    path: Path
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    invalid_before: int = 0
    invalid_after: int = 0


def run(
    config: RefineConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Refine the ``pred`` masks of a segmentation file into ``output`` (kind ``refined``).

    The output keeps image, ground truth and index, so ``eval OUTPUT --baseline SEG`` compares
    directly.

    Args:
        config: method, gate, context, sampling and device.
        inputs: the segmentation file and the NVAE checkpoint (and provenance).
        output: output slice file, written atomically.
        force: replace an existing ``output``.
        progress: one event per batch (unit ``rows``).

    Raises:
        FileKindError: the input is not a segmentation output; ``nvae`` is not an NVAE checkpoint.
        BadInputError: empty file; the checkpoint's input (4 or 12 channels, image size) does
            not match the file and ``context``.
        ConfigError: ``method="nvae"`` without a checkpoint.

    Example:
        >>> inputs = Inputs(Path("seg.h5"), nvae=Path("runs/nvae/best.pt"))
        >>> run(RefineConfig(samples=8), inputs, Path("refined.h5")).invalid_after  # doctest: +SKIP
        5
    """
    src, nvae, out = Path(inputs.seg), inputs.nvae, Path(output)
    kinds = ("3gram",) if config.context == Context.TRIGRAM.value else ("seg", "3gram", "refined")
    with SliceFile(src, kinds=kinds) as f:
        if not f.has("pred"):
            raise FileKindError(f"{src}: no 'pred' masks: not a segmentation output (run gen-seg first)")
        if len(f) == 0:
            raise BadInputError(f"{src}: the file has no rows")
        propose, model_info = _proposer(config, nvae, f)
        index = f.index
        keep = [n for n in ("image", "gt") if f.has(n)]
        specs = {n: (str(f.dataset(n).dtype), ()) for n in [*keep, "pred"]}
        extra = {
            c: ("str" if index[c].dtype == object else str(index[c].dtype))
            for c in index.columns
            if c not in INDEX_COLUMNS and c not in COLUMNS
        }
        spacing = f.spacing()
        result = Result(out, counts=dict.fromkeys(REASONS, 0))
        tracker = Tracker(progress, len(f), "rows")
        stored = {**config_to_dict(config), "nvae": model_info, "input_config": f.config, "input_kind": f.kind}
        with SliceWriter(
            out,
            kind="refined",
            config=stored,
            provenance=make_provenance([p for p in (src, nvae) if p])
            if inputs.provenance is None
            else inputs.provenance,
            shape=f.shape,
            arrays=specs,
            force=force,
            columns={**extra, **COLUMNS},
            inputs=[src, nvae],
        ) as writer:
            for start in range(0, len(f), config.batch_size):
                rows = slice(start, min(start + config.batch_size, len(f)))
                masks = f.read("pred", rows)
                context = f.read("context", rows) if config.context == Context.TRIGRAM.value else None
                refined, reasons, valid_in, valid_out = gate(masks, context, spacing[rows], propose, config)
                agreement = overlap.dice_batch(refined, masks)[0].mean(axis=1)
                records = index.iloc[rows].assign(
                    refine_changed=(refined != masks).any(axis=(1, 2)).astype(int),
                    refine_reason=list(reasons),
                    refine_agreement=agreement.astype(float),
                )
                for reason in reasons:
                    result.counts[reason] += 1
                result.invalid_before += int((~valid_in).sum())
                result.invalid_after += int((~valid_out).sum())
                writer.append(records, **{n: f.read(n, rows) for n in keep}, pred=refined)
                result.rows += len(records)
                tracker.advance(len(records))
    return result


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


def _proposer(config: RefineConfig, nvae: Path | None, f: SliceFile) -> tuple[Proposer, dict[str, Any] | None]:
    if config.method == Method.MORPH.value:
        return (lambda masks, context: [morph.clean_batch(masks)]), None
    if nvae is None:
        raise ConfigError("--method nvae needs --nvae CHECKPOINT (or use --method morph)")
    from acdctool.stages.refine.nvae_proposer import NvaeProposer

    proposer = NvaeProposer.load(nvae, config, image_shape=f.shape, path_for_errors=f.path)
    return proposer, proposer.info
