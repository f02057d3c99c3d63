"""Fixtures shared by the CLI tests: the training data of train-seg/gen-seg and tiny-net options."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app


@pytest.fixture(scope="session")
def tiny_seg_args() -> list[str]:
    """train-seg options for a tiny UNet on the CPU (seconds per epoch on 64² slices)."""
    return ["--net-arg", "channels=4,8,16", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="session")
def seg_slices(tmp_path_factory) -> Path:
    """synth (10 training + 1 test patients) → prep at 64 px, 2 folds (5 patients each), no val split.

    Built once per session through the CLI and shared by the train-seg and gen-seg tests.
    """
    runner = CliRunner()
    out = tmp_path_factory.mktemp("segcli") / "slices.h5"
    root = out.parent / "ACDC"
    res = runner.invoke(app, ["synth", str(root), "--patients", "10", "--test-patients", "1", "-q"])
    assert res.exit_code == 0, res.output
    args = ["prep", str(root), "-o", str(out), "--size", "64", "--folds", "2", "--val-fraction", "0", "--workers", "1"]
    res = runner.invoke(app, [*args, "-q"])
    assert res.exit_code == 0, res.output
    return out
