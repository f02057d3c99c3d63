"""`acdctool make-3gram`: round trip through the CLI, refusal of a prep file."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.slices import INDEX_COLUMNS, SliceFile

runner = CliRunner()


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
