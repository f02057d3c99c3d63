"""``refine``: correct segmentations with the NVAE (or the morphological baseline), gated.

Gate ``anatomy`` (after Painchaud et al.): a slice that passes the 16 anatomical criteria is
kept bit-identical; an invalid one is replaced by the candidate that is anatomically valid and
closest (mean Dice) to the input, among the NVAE's posterior-mean reconstruction and
``samples`` sampled decodings (or the morphological clean-up). If no candidate is valid, the
input is kept: the corrector never trades a plausible-looking error for a different one.
Only invalid slices go through the NVAE, so a good segmentation costs one validity check.

Every output row records ``refine_changed``, ``refine_reason`` and ``refine_agreement``
(mean Dice between output and input).

The gate is :func:`acdctool.correct.gate.gate`; the candidates come from
:mod:`acdctool.correct.nvae_proposer` (the NVAE) or :mod:`acdctool.correct.morph` (the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acdctool.config import Context, Method, RefineConfig, config_to_dict
from acdctool.correct import morph
from acdctool.correct.gate import Proposer, closest_valid, gate  # noqa: F401 (closest_valid re-exported)
from acdctool.errors import BadInputError, ConfigError, FileKindError
from acdctool.io.slices import INDEX_COLUMNS, SliceFile, SliceWriter
from acdctool.metrics import overlap
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance

REASONS = ("valid-kept", "corrected", "no-valid-candidate", "ungated")
COLUMNS = {"refine_changed": "int8", "refine_reason": "str", "refine_agreement": "float32"}


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


def _proposer(config: RefineConfig, nvae: Path | None, f: SliceFile) -> tuple[Proposer, dict[str, Any] | None]:
    if config.method == Method.MORPH.value:
        return (lambda masks, context: [morph.clean_batch(masks)]), None
    if nvae is None:
        raise ConfigError("--method nvae needs --nvae CHECKPOINT (or use --method morph)")
    from acdctool.correct.nvae_proposer import NvaeProposer

    proposer = NvaeProposer.load(nvae, config, image_shape=f.shape, path_for_errors=f.path)
    return proposer, proposer.info
