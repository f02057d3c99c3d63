"""Shared fixtures (tiny seeded synthetic ACDC folders and their prep output; the real-data
folder) and the marker lanes: ``real`` tests are the ones that use :func:`acdc_dir`, ``gpu`` tests
skip without CUDA. ``slow`` tests are deselected by ``addopts`` in pyproject.toml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ACDC_DIR_ENV = "ACDCTOOL_ACDC_DIR"
DEFAULT_ACDC_DIR = Path(__file__).resolve().parents[2] / "shared" / "acdc" / "training"
"""The 100 ACDC training patients beside the repository (never copied into it)."""


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "acdc_dir" in fixtures:
            item.add_marker(pytest.mark.real)
        if "acdc_prepped" in fixtures:
            item.add_marker(pytest.mark.slow)
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch  # only when a gpu test was collected: plain runs and --help stay torch-free here

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs CUDA (gpu lane)")
            for item in gpu:
                item.add_marker(skip)


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
def acdc_dir() -> Path:
    """The real ACDC training folder (patient001..patient100): ``$ACDCTOOL_ACDC_DIR``, else
    ``../shared/acdc/training`` beside the repository; the test is skipped when it is absent.

    Tests that use it are marked ``real`` at collection (``pytest -m real`` runs them alone).
    """
    root = Path(os.environ.get(ACDC_DIR_ENV) or DEFAULT_ACDC_DIR).expanduser()
    if not (root / "patient001" / "Info.cfg").is_file():
        pytest.skip(f"real ACDC data not found at {root} (set {ACDC_DIR_ENV})")
    return root


@pytest.fixture(scope="session")
def acdc_prepped(acdc_dir, tmp_path_factory) -> Path:
    """prep with the defaults (128 px) of the real training patients, once per session (about a
    minute on one core); the tests that use it are ``slow``."""
    from acdctool.config import PrepConfig
    from acdctool.stages import prep

    out = tmp_path_factory.mktemp("real") / "acdc.h5"
    result = prep.run(PrepConfig(), prep.Inputs(acdc_dir), out)
    assert result.patients == 100 and not result.skipped
    return out


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


def write_with_probs(src: Path, out: Path, probs_of) -> tuple[Path, dict]:
    """Copy a seg file adding ``probs = probs_of(arrays)`` (N, 4, H, W), stored as float16 as
    gen-seg ``--save-probs`` does; returns ``(out, arrays)``, the copied image, gt and pred."""
    import numpy as np

    from acdctool.io.slices import SliceFile, SliceWriter

    with SliceFile(src) as f:
        index, arrays = f.index, {n: f.read(n) for n in ("image", "gt", "pred")}
    probs = np.asarray(probs_of(arrays)).astype(np.float16)
    specs = {"image": ("float32", ()), "gt": ("uint8", ()), "pred": ("uint8", ()), "probs": ("float16", (4,))}
    with SliceWriter(out, kind="seg", config={}, provenance={}, shape=probs.shape[2:], arrays=specs) as w:
        w.append(index, **arrays, probs=probs)
    return out, arrays


@pytest.fixture(scope="session")
def with_probs_factory():
    """``make(src, out, probs_of) -> (out, arrays)``: :func:`write_with_probs`."""
    return write_with_probs


@pytest.fixture(scope="session")
def nvae_checkpoint_factory():
    """``make(path, in_channels=4, size=64, data=None, seed=0)`` writes an untrained tiny NVAE
    checkpoint (kind ``nvae-model``, weights seeded by ``seed``) and returns its path. Its ``data`` record defaults to
    one that trained on no patient (fold None, empty ``train_patients``), so refine's leakage
    check accepts it for any patient."""

    def make(path: Path, in_channels: int = 4, size: int = 64, data: dict | None = None, seed: int = 0) -> Path:
        import torch

        from acdctool.io.checkpoint import save_checkpoint
        from acdctool.models.nvae import NVAE

        with torch.random.fork_rng(devices=[]):  # seeded weights, the session's RNG left alone
            torch.manual_seed(seed)
            model = NVAE(
                in_channels=in_channels,
                image_size=size,
                stem_channels=4,
                scales=2,
                groups_per_scale=(1, 1),
                latent_channels=4,
            )
        save_checkpoint(
            path,
            kind="nvae-model",
            model_name="nvae",
            model_args=model.args,
            state_dict=model.state_dict(),
            config={},
            data={"input": "gt", "fold": None, "train_patients": []} if data is None else data,
        )
        return path

    return make


NNUNET_LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
"""nnU-Net's own ACDC dataset (Dataset027_ACDC) names its labels so."""


def _write_nnunet(
    src: Path, dst: Path, *, patients: list[str] | None = None, coding: dict[str, int] | None = None
) -> Path:
    """Write an ACDC folder's frames in the nnU-Net raw layout (tests only).

    ``training/`` patients go to imagesTr (``KEY_0000.nii.gz``, copied byte for byte) and labelsTr
    (``KEY.nii.gz``; re-coded when ``coding`` maps names to other values), ``testing/`` patients to
    imagesTs; ``dataset.json`` names the labels (nnU-Net's ACDC names by default).
    """
    import json

    import nibabel as nib
    import numpy as np

    names = dict(coding or NNUNET_LABELS)
    ours = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3, "LV": 3, "MYO": 2}
    lut = np.zeros(4, np.uint8)
    for name, value in names.items():
        lut[ours[name]] = value
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    roots = [(src / "training", "Tr"), (src / "testing", "Ts")] if (src / "training").is_dir() else [(src, "Tr")]
    for folder, split in roots:
        if not folder.is_dir():
            continue
        for patient in sorted(p for p in folder.iterdir() if p.is_dir()):
            if patients is not None and patient.name not in patients:
                continue
            for image in sorted(patient.glob("*_frame??.nii.gz")):
                key = image.name[: -len(".nii.gz")]
                shutil.copy(image, dst / f"images{split}" / f"{key}_0000.nii.gz")
                gt = image.with_name(f"{key}_gt.nii.gz")
                if split == "Tr" and gt.exists():
                    if coding is None:
                        shutil.copy(gt, dst / "labelsTr" / f"{key}.nii.gz")
                    else:
                        img = nib.load(gt)
                        data = lut[np.asanyarray(img.dataobj)]
                        nib.Nifti1Image(data, img.affine, img.header).to_filename(dst / "labelsTr" / f"{key}.nii.gz")
    (dst / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "cineMRI"}, "labels": names, "file_ending": ".nii.gz"}, indent=1)
    )
    return dst


@pytest.fixture(scope="session")
def nnunet_raw(synth_root, tmp_path_factory) -> Path:
    """The synthetic ACDC root in the nnU-Net raw layout (imagesTr/labelsTr/imagesTs, dataset.json)."""
    return _write_nnunet(synth_root, tmp_path_factory.mktemp("nnunet") / "Dataset900_Synth")


@pytest.fixture(scope="session")
def write_nnunet():
    """:func:`_write_nnunet`: an ACDC folder copied into the nnU-Net raw layout."""
    return _write_nnunet
