from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.errors import BadInputError
from acdctool.io.slices import INDEX_COLUMNS, SliceFile
from acdctool.stages.ngram import neighbour_rows, stack_context

runner = CliRunner()


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


def test_cli_round_trip(seg_file_factory, tmp_path):
    seg = seg_file_factory(lambda gt, idx: gt)
    out = tmp_path / "seg3.h5"
    res = runner.invoke(app, ["make-3gram", str(seg), "-o", str(out)])
    assert res.exit_code == 0, res.output
    with SliceFile(seg) as a, SliceFile(out, kinds=("3gram",)) as b:
        assert b.index[list(INDEX_COLUMNS)].equals(a.index[list(INDEX_COLUMNS)])
        np.testing.assert_array_equal(b.read("pred"), a.read("pred"))
        ctx = b.read("context")
        assert ctx.shape == (len(a), 3, *a.shape)
        np.testing.assert_array_equal(ctx[:, 1], a.read("pred"))
        first = (b.index.slice == 0).to_numpy()
        assert not ctx[first, 0].any()  # EOS before the first slice of each volume


def test_cli_rejects_prep_file_and_writes_nothing(prepped, tmp_path):
    out = tmp_path / "x.h5"
    res = runner.invoke(app, ["make-3gram", str(prepped), "-o", str(out)])
    assert res.exit_code == 65 and "'prep' file" in res.stderr and not out.exists()
    res = runner.invoke(app, ["make-3gram", str(prepped), "-o", str(out), "--source", "gt"])
    assert res.exit_code == 0 and out.exists()
