"""Masks made by other tools (NIfTI) → slice-file rows under prep's geometry contract (``import-seg``).

Per patient, every frame's image, predictions (one per model) and ground truth are read as 3D
volumes on one grid (:func:`acdctool.io.nifti.check_same_grid`) and their labels mapped to
acdctool's. One square crop serves all the patient's frames and models (as prep's does for ED
and ES), placed without ground truth (:class:`acdctool.config.ImportRoi`); crop, resize and
normalisation are prep's own (:func:`acdctool.data.prep.resize_crop`), so the rows carry the
same spacing and crop columns and every later stage works on them unchanged.

Each row also records where it came from (:data:`SOURCE_COLUMNS`), which ``export`` and
``eval --native`` use to go back to the original files: a slice whose mask is unchanged since
import (same CRC-32 as at import) is written back bit-identical from the source file, so
correcting imported masks never blurs the slices it leaves alone.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from acdctool.config import ImportRoi, ImportSegConfig
from acdctool.conventions import PHASES
from acdctool.data.crop_rule import CropBox, centre_box, heart_centred_box, largest_component, margin_box
from acdctool.data.prep import resize_crop
from acdctool.errors import BadInputError
from acdctool.io.acdc import Frame
from acdctool.io.labelmap import LabelMap, encode
from acdctool.io.layouts import Case
from acdctool.io.nifti import Volume, check_same_grid, read_volume, to_labels

SOURCE_COLUMNS: dict[str, str] = {
    "case": "str",
    "source_image": "str",
    "source_pred": "str",
    "source_gt": "str",
    "source_labels": "str",
    "source_gt_labels": "str",
    "source_crc": "int64",
}
"""Stage columns of imported rows: case key, absolute paths of the image, prediction and
ground truth (``""`` when none), their label maps (JSON, stored value → label) and the CRC-32 of
the row's ``pred`` as imported."""


def crc(mask: np.ndarray) -> int:
    """CRC-32 of a 2D uint8 mask's bytes (``source_crc``)."""
    return zlib.crc32(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())


@dataclass
class LoadedCase:
    """One case read from disk: image volume, label maps per model, ground truth labels."""

    case: Case
    image: Volume
    preds: dict[str, np.ndarray]
    gt: np.ndarray | None


def load_case(case: Case, pred_map: LabelMap, gt_map: LabelMap) -> LoadedCase:
    """Read a case's image, predictions and ground truth, checking each mask against the image's grid.

    Raises:
        InputMissingError, BadInputError: unreadable, not 3D, another grid than the image, labels
            outside the map (each naming the file).
    """
    assert case.image is not None
    image = read_volume(case.image)
    preds = {}
    for model, path in case.preds.items():
        vol = read_volume(path)
        check_same_grid(image, vol, "prediction")
        preds[model] = to_labels(vol, pred_map)
    gt = None
    if case.gt is not None:
        vol = read_volume(case.gt)
        check_same_grid(image, vol, "ground truth")
        gt = to_labels(vol, gt_map)
    return LoadedCase(case, image, preds, gt)


def lv_volume_ml(case: Case, pred_map: LabelMap, gt_map: LabelMap) -> float:
    """LV volume (mL) of a case, from its ground truth when it has one, else its first prediction."""
    path, mapping = (case.gt, gt_map) if case.gt is not None else (next(iter(case.preds.values())), pred_map)
    vol = read_volume(path)
    return float((to_labels(vol, mapping) == 3).sum() * np.prod(vol.spacing) / 1000.0)


def place_box(frames: list[LoadedCase], config: ImportSegConfig) -> tuple[CropBox, bool]:
    """The patient's crop from its predictions (all frames and models): (box, fell back to centre).

    The heart is the largest connected component of the predicted foreground, so a stray blob
    far from it does not stretch the crop.

    Raises:
        BadInputError: the frames' in-plane shapes differ.
    """
    first = frames[0].image
    shape = (int(first.shape[0]), int(first.shape[1]))
    for lc in frames[1:]:
        if lc.image.shape[:2] != shape:
            raise BadInputError(
                f"{lc.image.path}: in-plane shape {lc.image.shape[:2]} differs from {first.path.name} {shape}; "
                "the frames of a patient share one crop"
            )
    if config.roi == ImportRoi.CENTER.value:
        return centre_box(shape, first.spacing, config.roi_mm), False
    heart = np.zeros(shape, dtype=bool)
    for lc in frames:
        for labels in lc.preds.values():
            heart |= labels.any(axis=2)
    if not heart.any():
        return centre_box(shape, first.spacing, config.roi_mm), True
    if config.roi == ImportRoi.HEART.value:
        return heart_centred_box(heart, first.spacing, config.roi_mm), False
    return margin_box(largest_component(heart), config.margin), False


def patient_rows(
    frames: list[LoadedCase], config: ImportSegConfig, pred_map: LabelMap, gt_map: LabelMap
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], bool]:
    """One patient's rows (ED first, then ES; model by model) and arrays (image, pred, gt).

    Returns:
        (rows, arrays (N, size, size), whether the crop fell back to the image centre).
    """
    box, fallback = place_box(frames, config)
    prep = config.prep_config()
    order = sorted(frames, key=lambda lc: (PHASES.index(lc.case.phase) if lc.case.phase in PHASES else 2, lc.case.key))
    models = sorted({m for lc in frames for m in lc.preds})
    rows: list[dict[str, Any]] = []
    arrays: dict[str, list[np.ndarray]] = {"image": [], "pred": [], "gt": []}
    scale = box.size / config.size
    for model in models:
        for lc in order:
            if model not in lc.preds:
                continue
            c, vol = lc.case, lc.image
            spacing = vol.spacing
            img, pred = resize_crop(Frame(vol.data.astype(np.float32), lc.preds[model], spacing, vol.path), box, prep)
            gt = None
            if lc.gt is not None:
                _, gt = resize_crop(Frame(vol.data.astype(np.float32), lc.gt, spacing, vol.path), box, prep)
            assert pred is not None
            n = img.shape[0]
            for z in range(n):
                rows.append(
                    {
                        "patient": c.patient,
                        "group": c.group,
                        "phase": c.phase or "",
                        "frame": c.frame if c.frame is not None else 1,
                        "slice": z,
                        "n_slices": n,
                        "spacing_row": spacing[0] * scale,
                        "spacing_col": spacing[1] * scale,
                        "thickness": spacing[2],
                        "crop_r0": box.r0,
                        "crop_c0": box.c0,
                        "crop_size": box.size,
                        "orig_rows": vol.shape[0],
                        "orig_cols": vol.shape[1],
                        "split": "test",
                        "fold": -1,
                        "model": model,
                        "case": c.key,
                        "source_image": str(vol.path.resolve()),
                        "source_pred": str(c.preds[model].resolve()),
                        "source_gt": str(c.gt.resolve()) if c.gt is not None else "",
                        "source_labels": encode(pred_map),
                        "source_gt_labels": encode(gt_map) if c.gt is not None else "",
                        "source_crc": crc(pred[z]),
                    }
                )
            arrays["image"].append(img)
            arrays["pred"].append(pred)
            if gt is not None:
                arrays["gt"].append(gt)
    out = {k: np.concatenate(v) for k, v in arrays.items() if v}
    return rows, out, fallback


def restore_unchanged(volume: np.ndarray, masks: np.ndarray, rows: Any, array: str) -> np.ndarray:
    """Put back the source file's slices where a mask is unchanged since import.

    Args:
        volume: (X, Y, Z) uint8, the uncropped masks of one volume.
        masks: (Z, size, size) the volume's rows of ``array``, in slice order.
        rows: their index rows (a DataFrame with :data:`SOURCE_COLUMNS`).
        array: ``pred`` (slices whose CRC-32 matches ``source_crc`` come from ``source_pred``)
            or ``gt`` (the whole volume from ``source_gt``, when recorded).

    Returns:
        (X, Y, Z) uint8, a new array where anything was restored.
    """
    from acdctool.io.labelmap import decode

    first = rows.iloc[0]
    source, labels = (
        (first.source_gt, first.source_gt_labels) if array == "gt" else (first.source_pred, first.source_labels)
    )
    if not source:
        return volume
    keep = (
        np.ones(len(masks), bool)
        if array == "gt"
        else np.array([crc(m) == int(c) for m, c in zip(masks, rows.source_crc, strict=True)])
    )
    if not keep.any():
        return volume
    native = to_labels(read_volume(source), decode(labels))
    if native.shape != volume.shape:
        raise BadInputError(f"{source}: shape {native.shape} differs from what the slice file recorded {volume.shape}")
    out = volume.copy()
    out[:, :, keep] = native[:, :, keep]
    return out
