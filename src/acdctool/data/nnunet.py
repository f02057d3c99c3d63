"""nnU-Net raw datasets as prep input: cases grouped into patients, labels mapped, frames loaded.

``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz`` (+ ``imagesTs``), with the label map
of ``dataset.json`` (names mapped to RV/MYO/LV, :mod:`acdctool.io.labelmap`). Case names like
ACDC's (``patientNNN_frameYY``) are grouped into patients with two frames; ED/ES then come from
the ground truth's LV volume (the larger is ED), or without masks from the frame order. Any
other case is a patient of its own with one frame (ED). Groups are unknown (``""``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from acdctool.data.phases import assign_by_frame_order, assign_phases
from acdctool.io.acdc import Frame
from acdctool.io.labelmap import LabelMap, encode
from acdctool.io.layouts import Case
from acdctool.io.nifti import check_same_grid, read_volume, to_labels


def lv_ml(case: Case, mapping: LabelMap) -> float:
    """LV volume (mL) of a case's ground truth."""
    assert case.gt is not None
    vol = read_volume(case.gt)
    return float((to_labels(vol, mapping) == 3).sum() * np.prod(vol.spacing) / 1000.0)


def set_phases(cases: Sequence[Case], mapping: LabelMap) -> None:
    """ED/ES of every case: by the ground truth's LV volume, or by frame order without masks.

    Raises:
        BadInputError: a patient with more than two frames.
    """
    if all(c.gt is not None for c in cases):
        assign_phases(cases, {c.key: lv_ml(c, mapping) for c in cases})
    else:
        assign_by_frame_order(cases)


def load_frames(cases: Sequence[Case], mapping: LabelMap, with_mask: bool) -> dict[str, tuple[int, Frame]]:
    """One patient's frames for :func:`acdctool.data.prep.frames_rows`: phase → (frame number, frame).

    Raises:
        InputMissingError, BadInputError: unreadable, not 3D, label on another grid, labels
            outside the map (naming the file).
    """
    out: dict[str, tuple[int, Frame]] = {}
    for case in sorted(cases, key=lambda c: c.phase or ""):
        assert case.image is not None
        image = read_volume(case.image)
        mask = None
        if with_mask and case.gt is not None:
            label = read_volume(case.gt)
            check_same_grid(image, label, "label")
            mask = to_labels(label, mapping)
        frame = Frame(np.asarray(image.data, dtype=np.float32), mask, image.spacing, case.image)
        out[case.phase or "ED"] = (case.frame if case.frame is not None else 1, frame)
    return out


def with_sources(rows: list[dict[str, Any]], cases: Sequence[Case], mapping: LabelMap) -> list[dict[str, Any]]:
    """Add the source columns (:data:`acdctool.data.imported.SOURCE_COLUMNS`) to a patient's rows,
    so ``export`` and ``eval --native`` find the images and labels again without ``--like``."""
    by_phase = {c.phase or "ED": c for c in cases}
    for row in rows:
        case = by_phase[row["phase"]]
        assert case.image is not None
        row.update(
            case=case.key,
            source_image=str(case.image.resolve()),
            source_pred="",
            source_gt=str(case.gt.resolve()) if case.gt is not None else "",
            source_labels="",
            source_gt_labels=encode(mapping) if case.gt is not None else "",
            source_crc=0,
        )
    return rows
