"""QC fixtures: a synthetic segmentation file with corruptions and probabilities, and fold NVAEs."""

from __future__ import annotations

from pathlib import Path

import pytest
from qc_helpers import nvae_checkpoint, write_seg

from acdctool.io.slices import SliceFile


@pytest.fixture(scope="session")
def qc_seg(prepped, tmp_path_factory) -> Path:
    """A seg file (gt, probs) whose masks range from intact to badly corrupted."""
    return write_seg(prepped, tmp_path_factory.mktemp("qc") / "seg.h5")


@pytest.fixture(scope="session")
def fold_nvaes(prepped, tmp_path_factory) -> list[Path]:
    """Two untrained 64² NVAE checkpoints, one per fold of the prep fixture."""
    with SliceFile(prepped) as f:
        folds = {str(p): int(k) for p, k in f.index.groupby("patient")["fold"].first().items()}
    d = tmp_path_factory.mktemp("nvae")
    return [nvae_checkpoint(d / f"nvae-f{k}.pt", fold=k, folds=folds) for k in (0, 1)]
