"""Shared fixtures: tiny seeded synthetic ACDC folders and their prep output; real-data paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REAL_ACDC = Path(__file__).resolve().parents[2] / "shared" / "acdc" / "training"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A synthetic ACDC root: 5 training patients (one per group) and 2 testing patients."""
    from acdctool.config import SynthConfig
    from acdctool.stages import synth

    root = tmp_path_factory.mktemp("synth") / "ACDC"
    synth.run(SynthConfig(patients=5, test_patients=2, seed=7), None, root)
    return root


@pytest.fixture()
def acdc_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic training folder, free to corrupt."""
    dst = tmp_path / "training"
    shutil.copytree(synth_root / "training", dst)
    return dst


@pytest.fixture(scope="session")
def prepped(synth_root, tmp_path_factory) -> Path:
    """prep output (kind 'prep') of the synthetic training patients at 64 px, 2 folds."""
    from acdctool.config import PrepConfig
    from acdctool.stages import prep

    out = tmp_path_factory.mktemp("prep") / "slices.h5"
    prep.run(PrepConfig(size=64, folds=2, val_fraction=0.2), prep.Inputs(synth_root / "training"), out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny nets run fastest on one torch thread; two crawl when other jobs load the CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_acdc() -> Path:
    if not (REAL_ACDC / "patient001" / "Info.cfg").is_file():
        pytest.skip("real ACDC data not found at ../shared/acdc/training")
    return REAL_ACDC


def write_seg_file(src: Path, out: Path, pred_fn, model: str = "unet", kind: str = "seg") -> Path:
    """Copy a prep file into a seg-like file whose `pred` is `pred_fn(gt, index)` (tests only)."""
    from acdctool.io.slices import SliceFile, SliceWriter

    with SliceFile(src) as f:
        index, image, gt = f.index.copy(), f.read("image"), f.read("gt")
    index["model"] = model
    pred = pred_fn(gt.copy(), index)
    with SliceWriter(
        out,
        kind=kind,
        config={"test": True},
        provenance={"command": "test"},
        shape=gt.shape[1:],
        arrays={"image": ("float32", ()), "gt": ("uint8", ()), "pred": ("uint8", ())},
    ) as w:
        w.append(index, image=image, gt=gt, pred=pred)
    return out


@pytest.fixture()
def seg_file_factory(prepped, tmp_path):
    def make(pred_fn, name="seg.h5", model="unet", kind="seg"):
        return write_seg_file(prepped, tmp_path / name, pred_fn, model=model, kind=kind)

    return make
