"""Stage-test fixtures: a toy heart and a softmax peaked on a mask (refine's choice and smoothing tests)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _toy_heart(size: int = 40) -> np.ndarray:
    """LV in a MYO ring with an RV crescent on its left: anatomically valid ``(size, size)``."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - 20, xx - 23)
    m = np.zeros((size, size), np.uint8)
    m[r < 9] = 2
    m[r < 5] = 3
    m[(np.hypot(yy - 20, xx - 14) < 8) & (m == 0)] = 1
    return m


def _peaked_softmax(mask: np.ndarray, p: float = 0.9) -> np.ndarray:
    """(4, H, W) softmax that puts ``p`` on the mask's label, the rest spread evenly."""
    probs = np.full((4, *mask.shape), (1 - p) / 3, np.float32)
    np.put_along_axis(probs, mask[None].astype(np.intp), p, axis=0)
    return probs


@pytest.fixture(scope="session")
def toy_heart() -> Callable[..., np.ndarray]:
    return _toy_heart


@pytest.fixture(scope="session")
def peaked_softmax() -> Callable[..., np.ndarray]:
    return _peaked_softmax
