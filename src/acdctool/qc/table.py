"""The QC slice table of a segmentation file: every signal of every row, in file order.

:func:`slice_table` reads the ``pred`` masks in batches (with ``probs`` when the file has them,
and ``gt`` only to add the true Dice ``gt_dice``, per class ``gt_dice_<c>`` and ``gt_has_<c>``,
which no signal uses), computes the
per-slice signals (:mod:`.signals`), the NVAE agreement with the checkpoint assigned to each
patient (:mod:`.nvae`), the volume signals (:mod:`.volume`) and the uncalibrated
:func:`risk`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from acdctool.errors import BadInputError
from acdctool.io.slices import SliceFile
from acdctool.metrics import overlap
from acdctool.progress import Progress, Tracker
from acdctool.qc import signals
from acdctool.qc.nvae import NvaeBank
from acdctool.qc.volume import volume_signals

__all__ = ["KEY_COLUMNS", "SliceTable", "slice_table", "risk"]

KEY_COLUMNS = ("patient", "group", "phase", "slice", "n_slices", "model", "split", "fold")
"""Index columns copied into every QC table (rows are identified by patient/phase/slice/model)."""
_CARRIED = ("thickness",)


@dataclass
class SliceTable:
    """The slice table and what went into it."""

    table: pd.DataFrame
    has_probs: bool
    has_gt: bool
    nvae: dict[str, Any] = field(default_factory=dict)
    """Checkpoints and the patients each scored (empty without NVAE)."""


def slice_table(
    f: SliceFile,
    *,
    bank: NvaeBank | None = None,
    band_px: int = 2,
    batch_size: int = 32,
    use_probs: bool = True,
    workers: int = 1,
    progress: Progress | None = None,
) -> SliceTable:
    """All QC signals of every row of a file with ``pred`` masks.

    Args:
        f: an open slice file (gen-seg, make-3gram, refine or imported output).
        bank: NVAE checkpoints (None: no NVAE signals).
        band_px: half-width of the boundary band for ``entropy_band`` (px).
        batch_size: rows read and run through the NVAE at once.
        use_probs: compute the probability signals when the file has ``probs``.
        workers: processes for the anatomical criteria (the slowest mask signal); with more
            than one, they run beside the probability signals and the NVAE. The table does not
            depend on it.
        progress: one event per batch (unit ``rows``).

    Returns:
        :class:`SliceTable`: one row per file row, in file order.

    Raises:
        BadInputError: no ``pred`` array, no rows, labels outside 0..3, bad spacing.
    """
    if not f.has("pred"):
        raise BadInputError(f"{f.path}: no 'pred' masks to check (a prep file? run gen-seg or import masks first)")
    n = len(f)
    if n == 0:
        raise BadInputError(f"{f.path}: the file has no rows")
    index = f.index.reset_index(drop=True)
    spacing = f.spacing()
    has_probs, has_gt = use_probs and f.has("probs"), f.has("gt")
    assignment = bank.assign(index["patient"].to_numpy()) if bank is not None else None
    parts: list[tuple[signals.Columns, Future[signals.Columns] | None]] = []
    tracker = Tracker(progress, n, "rows")
    # The NVAE runs in a second thread (torch releases the GIL) and the anatomical criteria in
    # worker processes, while this thread reads the file and computes the probability signals.
    procs = ProcessPoolExecutor(max_workers=workers) if workers > 1 and n > batch_size else None
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            for start in range(0, n, batch_size):
                rows = slice(start, min(start + batch_size, n))
                where = f"{f.path}: rows {rows.start}..{rows.stop - 1}"
                masks = f.read("pred", rows)
                with _context(where):
                    overlap.check_label_map(masks, 3, "pred")
                    overlap.check_spacings(spacing[rows], len(masks))
                nvae_job = (
                    pool.submit(_nvae_columns, bank, assignment.model[rows], masks)
                    if bank is not None and assignment is not None
                    else None
                )
                mask_job = procs.submit(signals.mask_signals, masks, spacing[rows]) if procs is not None else None
                cols = signals.mask_signals(masks, spacing[rows]) if mask_job is None else {}
                if has_probs:
                    px = spacing[rows, 0] * spacing[rows, 1]
                    cols.update(signals.prob_signals(f.read("probs", rows), masks, band_px, px))
                if has_gt:
                    cols.update(signals.truth_columns(masks, f.read("gt", rows)))
                if nvae_job is not None:
                    cols.update(nvae_job.result())
                parts.append((cols, mask_job))
                _bound_in_flight(parts, 4 * workers)
                tracker.advance(rows.stop - rows.start)
        for i, (cols, job) in enumerate(parts):
            if job is not None:
                parts[i] = ({**job.result(), **cols}, None)  # mask columns first, as without workers
    finally:
        if procs is not None:
            procs.shutdown(cancel_futures=True)
    columns = [cols for cols, _ in parts]
    data = {k: np.concatenate([c[k] for c in columns]) for k in columns[0]}
    table = pd.concat([index[list(KEY_COLUMNS + _CARRIED)], pd.DataFrame(data)], axis=1)
    table = volume_signals(table)
    nvae: dict[str, Any] = {}
    if bank is not None and assignment is not None:
        table["nvae_checkpoint"] = assignment.model
        table["nvae_held_out"] = assignment.held_out
        nvae = {"checkpoints": bank.info, **assignment.summary(bank, index)}
    table["risk"] = risk(table)
    return SliceTable(_ordered(table), has_probs, has_gt, nvae)


@contextmanager
def _context(where: str) -> Iterator[None]:
    try:
        yield
    except BadInputError as exc:
        raise BadInputError(f"{where}: {exc}") from None


def _bound_in_flight(parts: list[tuple[signals.Columns, Future[signals.Columns] | None]], limit: int) -> None:
    """Wait for the oldest worker results while more than ``limit`` are pending (bounds memory)."""
    pending = [job for _, job in parts if job is not None and not job.done()]
    for job in pending[: max(0, len(pending) - limit)]:
        job.result()


def _nvae_columns(bank: NvaeBank, which: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    n = len(masks)
    out = signals.empty_nvae_signals(n)
    run = masks.reshape(n, -1).any(axis=1)  # an empty mask is not run through the NVAE
    for k in np.unique(which[run]):
        rows = np.flatnonzero(run & (which == k))
        recon, logp = bank.agreement(int(k), masks[rows])
        for name, values in signals.nvae_signals(masks[rows], recon, logp).items():
            out[name][rows] = values
    return out


def risk(table: pd.DataFrame) -> np.ndarray:
    """Uncalibrated risk in [0, 1] (higher: look first), from whatever signals the table has.

    ``risk = max(1 − prob_dice_mean, 1 − nvae_dice_mean, 0.15·invalid + 0.3·missing_mid +
    0.15·jump_max)``, the first two only when present (so an anatomically invalid slice alone
    stays under the default flag level 0.2: most invalid slices of a good net are fine). A
    heuristic ranking for runs without a calibration, not a predicted Dice.

    Example:
        >>> t = pd.DataFrame({"valid": [1, 0], "missing_mid": [0, 0], "jump_max": [0.0, 0.5],
        ...                   "nvae_dice_mean": [0.95, 0.6]})
        >>> risk(t).round(2).tolist()
        [0.05, 0.4]
    """
    mask_part = (
        0.15 * (1 - table["valid"].to_numpy(np.float64))
        + 0.3 * table["missing_mid"].to_numpy(np.float64)
        + 0.15 * table["jump_max"].to_numpy(np.float64)
    )
    terms = [mask_part]
    for col in ("prob_dice_mean", "nvae_dice_mean"):
        if col in table.columns:
            terms.append(1.0 - table[col].to_numpy(np.float64))
    return np.clip(np.max(terms, axis=0), 0.0, 1.0)


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    first = [*KEY_COLUMNS, "position", "z"]
    last = [c for c in table.columns if c == "risk" or c.startswith("gt_")]
    middle = [c for c in table.columns if c not in first and c not in last]
    return table[first + middle + last]
