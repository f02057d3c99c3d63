"""Preprocessing of ACDC patients for the slice dataset: ED/ES frames, square ROI crop, resize, normalise.

The ``prep`` stage (:mod:`acdctool.stages.prep`) streams patients through :func:`patient_rows`
into a slice file.

Geometry bookkeeping (the part that makes mm and mL right downstream): a volume of in-plane
spacing (sr, sc) mm is cropped to a square box of ``crop_size`` px and resized to ``size`` px,
so each output pixel measures (sr, sc) · crop_size / size mm. The resize keeps the field of
view (pixel centres at ``r0 − ½ + (i + ½) · crop_size / size`` in original pixels), which
``io/export.py`` inverts to map masks back onto the original grid.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.config import NonFinite, PrepConfig, Roi
from acdctool.conventions import FOREGROUND, PHASES
from acdctool.data.crop_rule import MIN_CROP_PX, CropBox, centre_box, heart_centred_box, margin_box  # noqa: F401
from acdctool.errors import AcdcToolError, BadInputError, InputMissingError
from acdctool.io.acdc import Frame, PatientInfo, PatientRef, frame_paths, load_frame


def ordered_map(fn, items, workers: int):
    """Yield ``(item, fn(item) or the AcdcToolError it raised)`` in input order.

    At most ``workers + 1`` results are in flight, so memory stays flat however many patients;
    NIfTI decoding and resampling release the GIL, so threads overlap them with HDF5 writes.
    """
    items = list(items)
    if workers <= 1:
        for item in items:
            yield item, _capture(fn, item)
        return
    window = workers + 1
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        pending = deque((item, pool.submit(_capture, fn, item)) for item in items[:window])
        nxt = window
        while pending:
            item, future = pending.popleft()
            if nxt < len(items):
                pending.append((items[nxt], pool.submit(_capture, fn, items[nxt])))
                nxt += 1
            yield item, future.result()
    finally:
        # Stopped early (an error, Ctrl-C, a signal): start no further patient.
        pool.shutdown(wait=True, cancel_futures=True)


def _capture(fn, item):
    try:
        return fn(item)
    except AcdcToolError as exc:
        return exc


def ground_truth_present(patients: list[PatientRef], infos: dict[str, PatientInfo]) -> bool:
    """Whether every patient has ED and ES ground-truth masks (False for none).

    Raises:
        BadInputError: some patients have masks and others do not.
    """
    present = [all(frame_paths(p, f)[1].exists() for f in (infos[p.name].ed, infos[p.name].es)) for p in patients]
    if any(present) and not all(present):
        lacking = [p.name for p, ok in zip(patients, present, strict=False) if not ok]
        raise BadInputError(
            f"ground truth missing for {', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''} "
            "while other patients have it; prep them separately (e.g. training/ and testing/)"
        )
    return bool(present) and all(present)


def patient_rows(
    patient: PatientRef, info: PatientInfo, split_fold: tuple[str, int], config: PrepConfig, has_gt: bool
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray | None]:
    """One patient's index rows, images (N, size, size) and masks (or None), ED slices first.

    Raises:
        InputMissingError, BadInputError: unreadable frames, ED/ES shapes that differ, no
            ground truth to place ``roi="gt"``, NaN/inf inside the crop (:func:`finite_frame`).
    """
    frames = {
        phase: (f, load_frame(patient, f, with_mask=has_gt))
        for phase, f in zip(PHASES, (info.ed, info.es), strict=True)
    }
    for number, frame in frames.values():
        if has_gt and frame.mask is None:  # removed after ground_truth_present looked
            raise InputMissingError(f"{frame_paths(patient, number)[1]}: missing ground truth")
    return frames_rows(patient.name, info.group, frames, split_fold, config, patient)


def frames_rows(
    name: str,
    group: str,
    frames: dict[str, tuple[int, Frame]],
    split_fold: tuple[str, int],
    config: PrepConfig,
    where: PatientRef | Path,
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray | None]:
    """Rows, images and masks of one patient's loaded frames (phase → (frame number, frame)).

    The frames share one crop (:func:`roi_box`), so they need the same in-plane shape; masks
    are returned when every frame has one.

    Raises:
        BadInputError: in-plane shapes differ; no ground truth to place ``roi``; NaN/inf inside
            the crop (:func:`finite_frame`).
    """
    items = list(frames.items())
    first = items[0][1][1]
    for _, (_, frame) in items[1:]:
        if frame.image.shape[:2] != first.image.shape[:2]:
            raise BadInputError(
                f"{frame.image_path}: in-plane shape {frame.image.shape[:2]} differs from "
                f"{items[0][0]} {first.image.shape[:2]}"
            )
    has_gt = all(frame.mask is not None for _, (_, frame) in items)
    box = roi_box({phase: frame for phase, (_, frame) in items}, config, where)
    items = [(phase, (number, finite_frame(frame, box, config))) for phase, (number, frame) in items]
    rows, images, masks = [], [], []
    for phase, (frame_no, frame) in items:
        img, mask = resize_crop(frame, box, config)
        if has_gt and mask is not None:
            masks.append(mask)
        n = img.shape[0]
        scale = box.size / config.size
        for z in range(n):
            rows.append(
                {
                    "patient": name,
                    "group": group,
                    "phase": phase,
                    "frame": frame_no,
                    "slice": z,
                    "n_slices": n,
                    "spacing_row": frame.spacing[0] * scale,
                    "spacing_col": frame.spacing[1] * scale,
                    "thickness": frame.spacing[2],
                    "crop_r0": box.r0,
                    "crop_c0": box.c0,
                    "crop_size": box.size,
                    "orig_rows": frame.image.shape[0],
                    "orig_cols": frame.image.shape[1],
                    "split": split_fold[0],
                    "fold": split_fold[1],
                    "model": "",
                }
            )
        images.append(img)
    return rows, np.concatenate(images), (np.concatenate(masks) if has_gt else None)


def roi_box(frames: dict[str, Frame], config: PrepConfig, patient: PatientRef | Path) -> CropBox:
    """The square crop shared by a patient's frames (so ED and ES stay comparable).

    ``roi="gt"``: centred on the bounding box of every labelled pixel of all frames, side =
    larger extent · (1 + 2·margin). ``roi="center"``: ``roi_mm`` around the image centre.
    ``roi="heart"``: ``roi_mm`` centred on the labelled heart (:mod:`acdctool.data.crop_rule`).

    Raises:
        BadInputError: ``roi`` is ``gt`` or ``heart`` and the ground truth is empty in every frame.
    """
    first = next(iter(frames.values()))
    rows, cols = first.image.shape[:2]
    if config.roi == Roi.CENTER.value:
        return centre_box((rows, cols), first.spacing, config.roi_mm)
    heart = np.zeros((rows, cols), dtype=bool)
    for frame in frames.values():
        assert frame.mask is not None
        heart |= frame.mask.any(axis=2)
    if not heart.any():
        where = patient.path if isinstance(patient, PatientRef) else patient
        raise BadInputError(
            f"{where}: ground truth is empty in every frame; cannot place --roi {config.roi} (try --roi center)"
        )
    if config.roi == Roi.HEART.value:
        return heart_centred_box(heart, first.spacing, config.roi_mm)
    return margin_box(heart, config.margin)


def finite_frame(frame: Frame, box: CropBox, config: PrepConfig) -> Frame:
    """``frame``, checked for NaN/inf image voxels inside ``box`` (per ``config.nonfinite``).

    With ``nonfinite="zero"`` every non-finite voxel becomes 0; outside the crop they are
    harmless either way (the crop's padding comes from the finite voxels).

    Raises:
        BadInputError: ``nonfinite="error"`` and the crop holds NaN/inf (file, count, first slice).
    """
    image = frame.image
    if np.isfinite(image).all():
        return frame
    if config.nonfinite == NonFinite.ZERO.value:
        return replace(frame, image=np.where(np.isfinite(image), image, 0).astype(image.dtype))
    inside = crop(image, box, 0.0)
    bad = ~np.isfinite(inside)
    if bad.any():
        z = int(np.flatnonzero(bad.any(axis=(0, 1)))[0])
        raise BadInputError(
            f"{frame.image_path}: {int(bad.sum())} NaN/inf voxels inside the crop, first in slice {z}; "
            "fix the image or use --nonfinite zero"
        )
    return frame


def crop(volume: np.ndarray, box: CropBox, fill: float) -> np.ndarray:
    """Crop (X, Y, Z) → (size, size, Z), padding with ``fill`` where the box overhangs."""
    rows, cols = volume.shape[:2]
    out = np.full((box.size, box.size, volume.shape[2]), fill, dtype=volume.dtype)
    r_lo, r_hi = max(box.r0, 0), min(box.r0 + box.size, rows)
    c_lo, c_hi = max(box.c0, 0), min(box.c0 + box.size, cols)
    if r_lo < r_hi and c_lo < c_hi:
        out[r_lo - box.r0 : r_hi - box.r0, c_lo - box.c0 : c_hi - box.c0] = volume[r_lo:r_hi, c_lo:c_hi]
    return out


def resize_crop(frame: Frame, box: CropBox, config: PrepConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop, resize with torchio (field of view kept) and normalise one frame.

    Returns:
        image (Z, size, size) float32 in [0, 1] (1st/99th percentile clipped);
        mask (Z, size, size) uint8 or None.
    """
    import torch
    import torchio as tio

    sr, sc, sz = frame.spacing
    affine = np.diag([sr, sc, sz, 1.0])
    z = frame.image.shape[2]
    resize = tio.Resize((config.size, config.size, z), image_interpolation="linear")
    finite = frame.image[np.isfinite(frame.image)]
    image = crop(frame.image, box, float(finite.min()) if finite.size else 0.0)
    mask = None if frame.mask is None else crop(frame.mask, box, 0)
    channels = [image[None]]
    if mask is not None and config.mask_interp == "smooth":
        # Per-label linear resize then argmax: smoother edges than nearest, fewer broken slices.
        # Background is 1 − the others after a linear resize, so it need not be resampled.
        channels.append(np.stack([mask == k for k in FOREGROUND]).astype(np.float32))
    stacked = torch.from_numpy(np.ascontiguousarray(np.concatenate(channels).astype(np.float32)))
    resized = resize(tio.ScalarImage(tensor=stacked, affine=affine)).data.numpy()
    out_img = normalise(resized[0], config.low_percentile, config.high_percentile)
    out_mask = None
    if mask is not None:
        if config.mask_interp == "smooth":
            fg = resized[1:]
            probs = np.concatenate([1.0 - fg.sum(axis=0, keepdims=True), fg])
            out_mask = probs.argmax(axis=0).astype(np.uint8)
        else:
            label = tio.LabelMap(tensor=torch.from_numpy(mask[None].astype(np.int16)), affine=affine)
            out_mask = resize(label).data.numpy()[0].astype(np.uint8)
        out_mask = np.ascontiguousarray(out_mask.transpose(2, 0, 1))
    return np.ascontiguousarray(out_img.transpose(2, 0, 1)), out_mask


def normalise(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to the [low, high] percentiles of the volume and scale to [0, 1] (float32)."""
    lo, hi = np.percentile(volume, [low, high])
    if hi <= lo:
        return np.zeros_like(volume, dtype=np.float32)
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)
