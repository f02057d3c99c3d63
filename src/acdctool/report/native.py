"""Evaluation at native resolution: NIfTI masks against NIfTI ground truth, as the ACDC challenge scores.

Each (prediction, ground truth) pair is read on its own voxel grid, spacing from pixdim (SPEC
§4), and scored with the same functions as the slice-file evaluation
(:mod:`acdctool.report.tables`), so the tables have the same columns:

- per slice (``volume[:, :, z]``): Dice, HD/HD95 (mm), the 16 anatomical criteria at the
  native pixel spacing;
- per volume: 3D Dice and Hausdorff distance (mm, with the slice spacing) per class, the ACDC
  official metrics, at ED and ES; both masks empty: Dice 1, HD 0; one empty: Dice 0, HD NaN;
- per patient and model: LV/RV EDV, ESV (mL), EF (%), MYO mass at ED (g, 1.05 g/mL), from the
  prediction and from the ground truth.

Example:
    >>> pair = NativePair("patient001_frame01", "patient001", "ED", 1, "DCM", "unet",
    ...                   Path("pred/patient001_frame01.nii.gz"), Path("gt/patient001_frame01_gt.nii.gz"))
    >>> tables = evaluate_pairs([pair])  # doctest: +SKIP
    >>> tables.volumes[["dice_lv", "hd_lv"]]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from acdctool.conventions import PHASES
from acdctool.io.labelmap import IDENTITY, LabelMap
from acdctool.io.nifti import check_same_grid, read_volume, to_labels
from acdctool.metrics import clinical
from acdctool.report.tables import INDICES, slice_metrics, volume_metrics


@dataclass(frozen=True)
class NativePair:
    """One volume to score: its identity and the two NIfTI files (with their label maps)."""

    key: str
    patient: str
    phase: str
    frame: int
    group: str
    model: str
    pred: Path
    gt: Path
    pred_labels: LabelMap = field(default_factory=lambda: dict(IDENTITY))
    gt_labels: LabelMap = field(default_factory=lambda: dict(IDENTITY))


@dataclass
class NativeTables:
    """Per-slice, per-volume and per-patient tables (columns as :mod:`acdctool.report.tables`)."""

    slices: pd.DataFrame
    volumes: pd.DataFrame
    clinical: pd.DataFrame


def pair_index(pair: NativePair, shape: tuple[int, ...], spacing: Sequence[float]) -> pd.DataFrame:
    """The slice index of one native volume (X, Y, Z): one row per ``z``, spacing in mm."""
    n = int(shape[2])
    return pd.DataFrame(
        {
            "patient": [pair.patient] * n,
            "group": [pair.group] * n,
            "phase": [pair.phase] * n,
            "frame": [pair.frame] * n,
            "slice": np.arange(n),
            "n_slices": [n] * n,
            "spacing_row": [float(spacing[0])] * n,
            "spacing_col": [float(spacing[1])] * n,
            "thickness": [float(spacing[2])] * n,
            "split": [""] * n,
            "fold": [-1] * n,
            "model": [pair.model] * n,
        }
    )


def score_pair(pair: NativePair, hausdorff: bool = True) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Slice table, volume record and volumes (mL) of one pair.

    Raises:
        InputMissingError, BadInputError: unreadable files, not 3D, prediction and ground truth
            on different grids, labels outside the label maps (naming the file).
    """
    gt_vol = read_volume(pair.gt)
    pred_vol = read_volume(pair.pred)
    check_same_grid(gt_vol, pred_vol, "prediction", "ground truth")
    gt = np.ascontiguousarray(to_labels(gt_vol, pair.gt_labels).transpose(2, 0, 1))
    pred = np.ascontiguousarray(to_labels(pred_vol, pair.pred_labels).transpose(2, 0, 1))
    index = pair_index(pair, gt_vol.shape, gt_vol.spacing)
    table = slice_metrics(index, pred, gt, hausdorff=hausdorff, workers=1)
    table.insert(0, "case", pair.key)
    record = volume_metrics(index, pred, gt, hausdorff=hausdorff, workers=1).iloc[0].to_dict()
    volume: dict[str, Any] = {"case": pair.key, "frame": pair.frame, **{str(k): v for k, v in record.items()}}
    spacing, thickness = gt_vol.spacing[:2], gt_vol.spacing[2]
    ml: dict[str, Any] = {
        "pred": clinical.volumes_ml(pred, spacing, thickness),
        "gt": clinical.volumes_ml(gt, spacing, thickness),
    }
    return table, volume, ml


def evaluate_pairs(
    pairs: Sequence[NativePair],
    *,
    hausdorff: bool = True,
    workers: int = 1,
    on_pair: Callable[[], None] | None = None,
) -> NativeTables:
    """Score every pair at its native resolution (``workers`` processes; same result for any).

    Args:
        pairs: the volumes to score.
        hausdorff: compute HD/HD95 (NaN columns otherwise).
        workers: processes.
        on_pair: called after each pair (progress).

    Raises:
        InputMissingError, BadInputError: see :func:`score_pair`.
    """
    results = []
    if workers > 1 and len(pairs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(score_pair, pairs, [hausdorff] * len(pairs)):
                results.append(res)
                if on_pair:
                    on_pair()
    else:
        for pair in pairs:
            results.append(score_pair(pair, hausdorff))
            if on_pair:
                on_pair()
    slices = pd.concat([r[0] for r in results], ignore_index=True) if results else pd.DataFrame()
    volumes = pd.DataFrame.from_records([r[1] for r in results])
    table = clinical_records(pairs, [r[2] for r in results])
    return NativeTables(slices, volumes, table)


def clinical_records(pairs: Sequence[NativePair], ml: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per patient and model with both an ED and an ES volume: the clinical indices, predicted
    (``<index>_pred``) and reference (``<index>_gt``), as :func:`acdctool.report.tables.clinical_table`."""
    phases: dict[tuple[str, str], dict[str, tuple[NativePair, dict[str, Any]]]] = {}
    for pair, vols in zip(pairs, ml, strict=True):
        if pair.phase in PHASES:
            phases.setdefault((pair.patient, pair.model), {})[pair.phase] = (pair, vols)
    records = []
    for (patient, model), found in sorted(phases.items()):
        if set(found) != set(PHASES):
            continue
        (ed_pair, ed), (es_pair, es) = found[PHASES[0]], found[PHASES[1]]
        rec: dict[str, Any] = {
            "patient": patient,
            "group": ed_pair.group,
            "model": model,
            "ed_frame": ed_pair.frame,
            "es_frame": es_pair.frame,
        }
        for src in ("pred", "gt"):
            rec[f"lv_edv_{src}"], rec[f"lv_esv_{src}"] = ed[src]["lv"], es[src]["lv"]
            rec[f"lv_ef_{src}"] = clinical.ejection_fraction(ed[src]["lv"], es[src]["lv"])
            rec[f"rv_edv_{src}"], rec[f"rv_esv_{src}"] = ed[src]["rv"], es[src]["rv"]
            rec[f"rv_ef_{src}"] = clinical.ejection_fraction(ed[src]["rv"], es[src]["rv"])
            rec[f"myo_mass_{src}"] = clinical.myocardial_mass(ed[src]["myo"])
        records.append(rec)
    columns = ["patient", "group", "model", "ed_frame", "es_frame"] + [
        f"{name}_{src}" for src in ("pred", "gt") for name in INDICES
    ]
    return pd.DataFrame.from_records(records, columns=columns)
