"""QC fixtures: synthetic segmentation files with known corruptions and probabilities, fold NVAEs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from acdctool.conventions import CLASSES
from acdctool.io.slices import SliceFile, SliceWriter
from acdctool.qc.calibration import Calibration
from acdctool.qc.hurdle import ClassModel, Logistic, SliceModel
from acdctool.qc.model import LinearIsotonic


def corrupt(gt: np.ndarray, severity: np.ndarray, seed: int = 0) -> np.ndarray:
    """Masks worse the higher ``severity`` (0..1): eroded structures, then stray blobs."""
    rng = np.random.default_rng(seed)
    pred = gt.copy()
    for i, s in enumerate(severity):
        if s > 0.5 and pred[i].any():
            lab = int(rng.integers(1, 4))
            m = pred[i] == lab
            pred[i][m & ~ndimage.binary_erosion(m, iterations=int(1 + 4 * (s - 0.5) / 0.5))] = 0
        if s > 0.8:
            y, x = rng.integers(4, pred.shape[1] - 10, 2)
            pred[i, y : y + 6, x : x + 6] = int(rng.integers(1, 4))
    return pred


def fake_probs(pred: np.ndarray, noise: np.ndarray, seed: int = 0) -> np.ndarray:
    """Softmax-like (N, 4, H, W) around ``pred``, blurrier where ``noise`` (per row) is larger."""
    rng = np.random.default_rng(seed)
    logits = np.eye(4, dtype=np.float32)[pred].transpose(0, 3, 1, 2) * 4
    logits += rng.normal(0, 1, logits.shape).astype(np.float32) * (1 + 3 * noise[:, None, None, None])
    logits = ndimage.uniform_filter(logits, size=(1, 1, 3, 3))
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(np.float16)


def write_seg(
    prepped: Path,
    out: Path,
    *,
    severity: np.ndarray | None = None,
    gt: bool = True,
    probs: bool = True,
    seed: int = 0,
    kind: str = "seg",
) -> Path:
    """A seg file from the prep fixture: pred = corrupted gt (``severity`` per row, default random)."""
    with SliceFile(prepped) as f:
        index, image, truth = f.index.copy(), f.read("image"), f.read("gt")
    index["model"] = "unet"
    sev = np.random.default_rng(seed).uniform(0, 1, len(truth)) if severity is None else severity
    pred = corrupt(truth, sev, seed)
    arrays: dict = {"image": ("float32", ()), "pred": ("uint8", ())}
    data: dict = {"image": image, "pred": pred}
    if gt:
        arrays["gt"], data["gt"] = ("uint8", ()), truth
    if probs:
        arrays["probs"], data["probs"] = ("float16", (4,)), fake_probs(pred, sev, seed)
    with SliceWriter(
        out, kind=kind, config={"test": True}, provenance={}, shape=truth.shape[1:], arrays=arrays, force=True
    ) as w:
        w.append(index, **data)
    return out


@pytest.fixture(scope="session")
def write_qc_seg():
    """``write_qc_seg(prepped, out, severity=None, gt=True, probs=True, seed=0)``: a seg file whose masks are
    the prep file's ground truth corrupted by ``severity`` per row (random by default)."""
    return write_seg


@pytest.fixture(scope="session")
def qc_nvae_checkpoint(nvae_checkpoint_factory):
    """``qc_nvae_checkpoint(path, fold=..., folds={...}, in_channels=4, size=64)``: an untrained NVAE
    checkpoint of that fold (weights seeded by the fold), made by ``nvae_checkpoint_factory``."""

    def make(path: Path, *, fold: int | None, folds: dict[str, int], in_channels: int = 4, size: int = 64) -> Path:
        data = {"input": "gt", "fold": fold, "folds": folds}
        return nvae_checkpoint_factory(path, in_channels, size, data=data, seed=0 if fold is None else fold)

    return make


@pytest.fixture(scope="session")
def qc_seg(prepped, tmp_path_factory) -> Path:
    """A seg file (gt, probs) whose masks range from intact to badly corrupted."""
    return write_seg(prepped, tmp_path_factory.mktemp("qc") / "seg.h5")


@pytest.fixture(scope="session")
def fold_nvaes(prepped, tmp_path_factory, qc_nvae_checkpoint) -> list[Path]:
    """Two untrained 64² NVAE checkpoints, one per fold of the prep fixture."""
    with SliceFile(prepped) as f:
        folds = {str(p): int(k) for p, k in f.index.groupby("patient")["fold"].first().items()}
    d = tmp_path_factory.mktemp("nvae")
    return [qc_nvae_checkpoint(d / f"nvae-f{k}.pt", fold=k, folds=folds) for k in (0, 1)]


def _hand_calibration(path: Path, features: list[str]) -> Path:
    """A valid calibration made by hand (no fitting): every class present in the mask scores the
    first feature, an absent one scores 1; the slice's predicted Dice is their mean."""
    f = len(features)
    z, o = np.zeros(f), np.ones(f)
    never = Logistic(list(features), z, o, z, -30.0)  # P(spurious) = P(missed) ≈ 0
    first = LinearIsotonic(list(features), z, o, np.r_[1.0, z[1:]], 0.0, np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    classes = {c: ClassModel(list(features), never, never, first) for c in CLASSES}
    model = SliceModel(classes, np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    return Calibration(model, training_patients=["patient999"]).save(path)


@pytest.fixture(scope="session")
def hand_calibration():
    """``make(path, features)``: a calibration file made by hand (see :func:`_hand_calibration`)."""
    return _hand_calibration
