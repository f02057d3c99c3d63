"""QC test helpers: synthetic segmentation files with known corruptions, probabilities, fold NVAEs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from acdctool.io.slices import SliceFile, SliceWriter


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


def nvae_checkpoint(path: Path, *, fold: int | None, folds: dict[str, int], in_channels: int = 4, size: int = 64):
    import torch

    from acdctool.io.checkpoint import save_checkpoint
    from acdctool.models.nvae import NVAE

    torch.manual_seed(0 if fold is None else fold)
    model = NVAE(
        in_channels=in_channels, image_size=size, stem_channels=4, scales=2, groups_per_scale=(1, 1), latent_channels=4
    )
    data = {"input": "gt", "fold": fold, "folds": folds}
    save_checkpoint(
        path,
        kind="nvae-model",
        model_name="nvae",
        model_args=model.args,
        state_dict=model.state_dict(),
        config={},
        data=data,
    )
    return path
