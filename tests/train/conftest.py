"""A tiny hand-made prep slice file (64×64 px, 7 patients, 2 folds, train/val/test) for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acdctool.io.slices import INDEX_COLUMNS, SliceWriter

# patient -> (split, fold): folds 0 and 1 each hold two train and one val patient; one test patient.
PATIENTS = {
    "patient001": ("train", 0),
    "patient002": ("train", 1),
    "patient003": ("train", 0),
    "patient004": ("train", 1),
    "patient005": ("val", 0),
    "patient006": ("val", 1),
    "patient007": ("test", -1),
}
SLICES = 3  # per volume; ED and ES → 6 rows per patient


def blob_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Label maps with an LV disk (3), a MYO ring (2) and an RV blob (1) at jittered places."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = size / 2 + rng.uniform(-4, 4, 2)
        r = rng.uniform(6, 10)
        d = np.hypot(yy - cy, xx - cx)
        rv = np.hypot(yy - cy, xx - (cx - 1.8 * r)) < 1.1 * r
        out[i][rv] = 1
        out[i][d < r + 3] = 2
        out[i][d < r] = 3
    return out


def make_slices(path: Path, *, size: int = 64, with_gt: bool = True, nan_row: int | None = None, seed: int = 0) -> Path:
    """Write a prep-kind slice file; images are label-dependent intensities plus noise in [0, 1]."""
    rng = np.random.default_rng(seed)
    rows, images, masks = [], [], []
    for p, (split, fold) in PATIENTS.items():
        for phase in ("ED", "ES"):
            gt = blob_masks(rng, SLICES, size)
            img = np.choose(gt, [0.1, 0.5, 0.7, 0.9]).astype(np.float32) + rng.normal(0, 0.05, gt.shape).astype(
                np.float32
            )
            images.append(np.clip(img, 0, 1))
            masks.append(gt)
            for s in range(SLICES):
                row = {c: 0 for c in INDEX_COLUMNS}
                row.update(
                    patient=p,
                    group="NOR",
                    phase=phase,
                    frame=1 if phase == "ED" else 5,
                    slice=s,
                    n_slices=SLICES,
                    spacing_row=1.5,
                    spacing_col=1.5,
                    thickness=10.0,
                    crop_size=size,
                    orig_rows=size,
                    orig_cols=size,
                    split=split,
                    fold=fold,
                    model="",
                )
                rows.append(row)
    image, gt = np.concatenate(images), np.concatenate(masks)
    if nan_row is not None:
        image[nan_row] = np.nan
    arrays = {"image": ("float32", ()), **({"gt": ("uint8", ())} if with_gt else {})}
    data = {"image": image, **({"gt": gt} if with_gt else {})}
    with SliceWriter(
        path, kind="prep", config={"size": size}, provenance={"command": "test"}, shape=(size, size), arrays=arrays
    ) as w:
        w.append(rows, **data)
    return path


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    return make_slices(tmp_path_factory.mktemp("tiny") / "slices.h5")


@pytest.fixture()
def slices_factory():
    """:func:`make_slices` itself, for tests that need a variant (no masks, a NaN row, ...)."""
    return make_slices


@pytest.fixture(scope="module", autouse=True)
def _tiny_nets_one_thread(one_thread):
    """Every test under tests/train runs its tiny nets on one thread (see tests/conftest.py)."""
