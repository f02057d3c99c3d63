"""``make-3gram``: stack each slice's mask with its neighbours' (previous, current, next).

For every row, ``context[i] = (mask of slice z−1, mask of slice z, mask of slice z+1)`` within
the same patient, phase and model; an all-background "EOS" mask stands beyond both ends of a
volume. The 3-gram NVAE takes the three masks one-hot (12 channels) and predicts the current
slice (4 classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from acdctool.config import Masks, NgramConfig, config_to_dict
from acdctool.errors import BadInputError
from acdctool.io.slices import INDEX_COLUMNS, SliceFile, SliceWriter, volume_groups
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance


def neighbour_rows(index: pd.DataFrame, path: Path | str = "input") -> np.ndarray:
    """(N, 3) row numbers of the previous, current and next slice of every row; −1 for EOS.

    Raises:
        BadInputError: a volume (named) has a missing or duplicated slice position.
    """
    out = np.full((len(index), 3), -1, dtype=np.int64)
    slices, n_slices = index["slice"].to_numpy(), index["n_slices"].to_numpy()
    for key, rows in volume_groups(index):
        positions = slices[rows]
        expected = int(n_slices[rows[0]])
        if len(rows) != expected or not np.array_equal(positions, np.arange(expected)):
            dupes = sorted({int(p) for p in positions if (positions == p).sum() > 1})
            missing = sorted(set(range(expected)) - set(positions.tolist()))
            what = f"duplicated slices {dupes}" if dupes else f"missing slices {missing}"
            model = f" model {key[2]}" if key[2] else ""
            raise BadInputError(f"{path}: volume {key[0]} {key[1]}{model} has {what} (of {expected})")
        out[rows, 1] = rows
        out[rows[1:], 0] = rows[:-1]
        out[rows[:-1], 2] = rows[1:]
    return out


def stack_context(masks: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 context from label maps (N, H, W) and :func:`neighbour_rows`."""
    padded = np.concatenate([masks, np.zeros((1, *masks.shape[1:]), dtype=masks.dtype)])  # row −1: EOS
    return padded[neighbours]


@dataclass(frozen=True)
class Inputs:
    """What make-3gram reads."""

    seg: Path
    """A gen-seg or refine output; with ``source="gt"`` any slice file with ground truth."""
    provenance: Provenance | None = None
    """Stored in the file; None: made here, without a command line."""


@dataclass
class Result:
    """The file written and its row count."""

    path: Path
    rows: int


def run(
    config: NgramConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Write ``output`` (kind ``3gram``): the input's rows, arrays and index plus ``context``.

    Args:
        config: which masks to stack (``pred`` or ``gt``).
        inputs: the segmentation file (and provenance).
        output: output ``.h5`` path, written atomically.
        force: replace an existing ``output``.
        progress: one event when the rows are written (unit ``rows``).

    Raises:
        FileKindError: the input is not a slice file with the chosen masks (``pred`` needs a
            gen-seg/refine output; ``gt`` needs ground truth).
        BadInputError: a volume with missing or duplicated slices, or an empty file.
        OutputError: ``output`` exists (without ``force``).

    Example:
        >>> run(NgramConfig(), Inputs(Path("seg.h5")), Path("seg3.h5")).rows  # doctest: +SKIP
        1448
    """
    src = Path(inputs.seg)
    kinds = ("seg", "refined") if config.source == Masks.PRED.value else ("prep", "seg", "refined")
    with SliceFile(src, kinds=kinds) as f:
        if not f.has(config.source):
            raise BadInputError(f"{src}: no '{config.source}' masks to build the context from")
        if len(f) == 0:
            raise BadInputError(f"{src}: the file has no rows")
        index = f.index
        tracker = Tracker(progress, len(index), "rows")
        neighbours = neighbour_rows(index, src)
        names = [n for n in f.arrays if n != "context"]
        arrays = {n: f.read(n) for n in names}
        specs = {n: (str(a.dtype), a.shape[1:-2]) for n, a in arrays.items()}
        extra = {
            c: ("str" if index[c].dtype == object else str(index[c].dtype))
            for c in index.columns
            if c not in INDEX_COLUMNS
        }
        source_config, shape = f.config, f.shape
    arrays["context"] = stack_context(arrays[config.source], neighbours)
    specs["context"] = ("uint8", (3,))
    with SliceWriter(
        output,
        kind="3gram",
        config={**config_to_dict(config), "input_config": source_config},
        provenance=make_provenance([src]) if inputs.provenance is None else inputs.provenance,
        shape=shape,
        arrays=specs,
        force=force,
        columns=extra,
        inputs=[src],
    ) as w:
        w.append(index, **arrays)
    tracker.advance(len(index))
    return Result(Path(output), len(index))
