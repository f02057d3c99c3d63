"""Every reliability test runs its tiny nets on one thread; ``small`` is a few rows of ``prepped``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module", autouse=True)
def _tiny_nets_one_thread(one_thread):
    """Tiny nets on one thread."""


@pytest.fixture(scope="session")
def small(prepped, tmp_path_factory) -> Path:
    """The first two slices of every volume of the shared prep file (fast training tests)."""
    from reliability_helpers import subset

    from acdctool.io.slices import SliceFile

    with SliceFile(prepped) as f:
        rows = np.flatnonzero(f.index["slice"].to_numpy() < 2)
    return subset(prepped, tmp_path_factory.mktemp("small") / "small.h5", rows)
