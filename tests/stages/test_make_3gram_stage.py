"""The ``make-3gram`` stage: neighbours per volume (order, EOS, no crossing), broken volumes, the stage's output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from acdctool.config import NgramConfig
from acdctool.errors import BadInputError
from acdctool.io.slices import INDEX_COLUMNS, SliceFile
from acdctool.stages import make_3gram
from acdctool.stages.make_3gram import neighbour_rows, stack_context


def _index(volumes):
    """volumes: list of (patient, phase, model, n_slices, order of slices in the file)."""
    rows = []
    for patient, phase, model, n, order in volumes:
        for z in order:
            r = {c: 0 for c in INDEX_COLUMNS}
            r.update(
                patient=patient,
                phase=phase,
                model=model,
                slice=z,
                n_slices=n,
                group="NOR",
                split="train",
                spacing_row=1.0,
                spacing_col=1.0,
                thickness=8.0,
            )
            rows.append(r)
    return pd.DataFrame(rows)


def test_hand_made_volumes_order_eos_and_no_crossing():
    # two patients, two phases, two models, slices stored out of order
    idx = _index(
        [
            ("p1", "ED", "unet", 3, [2, 0, 1]),
            ("p1", "ES", "unet", 2, [0, 1]),
            ("p1", "ED", "attunet", 3, [0, 1, 2]),
            ("p2", "ED", "unet", 1, [0]),
        ]
    )
    n = len(idx)
    masks = np.stack([np.full((2, 2), i + 1, np.uint8) for i in range(n)])  # row i holds value i+1
    ctx = stack_context(masks, neighbour_rows(idx))
    val = ctx[:, :, 0, 0]  # (N, 3): row number + 1 of prev/current/next, 0 = EOS
    by = {(r.patient, r.phase, r.model, r.slice): tuple(val[i]) for i, r in idx.iterrows()}
    assert by["p1", "ED", "unet", 0] == (0, 2, 3)  # slice 0 is row 1; next (slice 1) is row 2
    assert by["p1", "ED", "unet", 1] == (2, 3, 1)
    assert by["p1", "ED", "unet", 2] == (3, 1, 0)
    assert by["p1", "ES", "unet", 0] == (0, 4, 5) and by["p1", "ES", "unet", 1] == (4, 5, 0)
    assert by["p1", "ED", "attunet", 1] == (6, 7, 8)  # never mixes models
    assert by["p2", "ED", "unet", 0] == (0, 9, 0)  # one-slice volume: EOS both sides
    assert (ctx[:, 1] == masks).all()


@pytest.mark.parametrize("order, needle", [([0, 2], "missing slices [1]"), ([0, 1, 1], "duplicated slices [1]")])
def test_broken_volume_named(order, needle):
    idx = _index([("p7", "ES", "unet", 3, order)])
    with pytest.raises(BadInputError, match=rf"p7 ES model unet has {needle.replace('[', '.').replace(']', '.')}"):
        neighbour_rows(idx)


def test_run_reports_progress_and_stores_provenance(seg_file_factory, tmp_path):
    seg = seg_file_factory(lambda gt, idx: gt)
    events = []
    given = {"command": "acdctool make-3gram seg.h5 -o seg3.h5", "inputs": [str(seg)]}
    result = make_3gram.run(
        NgramConfig(), make_3gram.Inputs(seg, provenance=given), tmp_path / "s3.h5", progress=events.append
    )
    with SliceFile(result.path, kinds=("3gram",)) as f:
        assert len(f) == result.rows and f.provenance == given
    assert [(e.done, e.total, e.unit) for e in events] == [(0, result.rows, "rows"), (result.rows, result.rows, "rows")]
    result = make_3gram.run(NgramConfig(), make_3gram.Inputs(seg), tmp_path / "own.h5")
    with SliceFile(result.path) as f:
        assert f.provenance["command"] is None and f.provenance["inputs"] == [str(seg.resolve())]
