"""Metric tables: per slice, per volume (patient × phase × model) and clinical indices.

Every figure in mm or mL is computed from the spacing stored with each row (after crop and
resize), never from pixel counts alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from acdctool.conventions import CLASS_NAMES, CLASSES, PHASES, VOLUME_KEY, slice_position
from acdctool.io.slices import volume_groups
from acdctool.metrics import anatomy, clinical, overlap
from acdctool.workers import process_map

KEY = ["patient", "group", "phase", "slice", "n_slices", "split", "fold", "model"]
_CHUNK = 256


def position(slice_index: pd.Series, n_slices: pd.Series) -> pd.Series:
    """:func:`acdctool.conventions.slice_position` of every row (``base``/``mid``/``apex``)."""
    where = zip(slice_index.to_numpy(), n_slices.to_numpy(), strict=True)
    return pd.Series([slice_position(int(i), int(n)) for i, n in where], index=slice_index.index)


def slice_metrics(
    index: pd.DataFrame, pred: np.ndarray, gt: np.ndarray, *, hausdorff: bool = True, workers: int = 1
) -> pd.DataFrame:
    """One row per slice: Dice, HD, HD95 per class, anatomical criteria and validity.

    Args:
        index: the slice index of ``pred`` (spacing columns in mm).
        pred, gt: label maps ``(N, H, W)`` uint8.
        hausdorff: compute HD/HD95 (mm); NaN columns otherwise.
        workers: processes; chunks are computed independently, so results do not depend on it.

    Returns:
        DataFrame with the key columns, ``position``, ``dice_<c>``, ``dice_<c>_conv``,
        ``dice_mean``, ``hd_<c>``, ``hd95_<c>`` (mm), each criterion ``anat_<name>``,
        ``n_failed``, ``failed`` and ``valid``; ``c`` in rv, myo, lv.
    """
    spacing = index[["spacing_row", "spacing_col"]].to_numpy(np.float64)
    chunks = [slice(i, i + _CHUNK) for i in range(0, len(index), _CHUNK)]
    jobs = [(pred[c], gt[c], spacing[c], hausdorff) for c in chunks]
    parts = _map(_chunk_metrics, jobs, workers)
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    out = index[KEY].reset_index(drop=True).copy()
    out.insert(4, "position", position(out["slice"], out["n_slices"]))
    return pd.concat([out, table], axis=1)


def _chunk_metrics(pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray, with_hd: bool) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {}
    dice, codes = overlap.dice_batch(pred, gt)
    for j, name in enumerate(CLASSES):
        cols[f"dice_{name}"] = dice[:, j]
        cols[f"dice_{name}_conv"] = np.array([overlap.CONVENTION_CODES[c].value for c in codes[:, j]])
    cols["dice_mean"] = dice.mean(axis=1)
    if with_hd:
        hd, hd95, _ = overlap.hausdorff_batch(pred, gt, spacing)
    else:
        hd = hd95 = np.full(dice.shape, np.nan)
    for j, name in enumerate(CLASSES):
        cols[f"hd_{name}"], cols[f"hd95_{name}"] = hd[:, j], hd95[:, j]
    values, valid = anatomy.evaluate_batch(pred, spacing)
    passed = anatomy.criteria_passed(values)
    for j, name in enumerate(anatomy.CRITERIA_NAMES):
        cols[f"anat_{name}"] = values[:, j]
    cols["n_failed"] = (~passed).sum(axis=1)
    names = np.array(anatomy.CRITERIA_NAMES)
    cols["failed"] = np.array([";".join(names[~row]) for row in passed], dtype=object)
    cols["valid"] = valid
    return pd.DataFrame(cols)


def _map(fn, jobs: list[tuple], workers: int) -> list:
    """``[fn(*job) for job in jobs]``, over ``workers`` processes when there is enough work (ended
    with the command: :func:`acdctool.workers.process_map`)."""
    return process_map(fn, jobs, workers)


def volume_metrics(
    index: pd.DataFrame, pred: np.ndarray, gt: np.ndarray, *, hausdorff: bool = True, workers: int = 1
) -> pd.DataFrame:
    """One row per volume: 3D Dice and HD/HD95 (mm, with the slice thickness) per class."""
    groups = volume_groups(index)
    step = max(1, -(-len(groups) // (4 * workers)))
    jobs = []
    for start in range(0, len(groups), step):
        part = groups[start : start + step]
        jobs.append(([(key, index.iloc[rows[0]].to_dict(), pred[rows], gt[rows]) for key, rows in part], hausdorff))
    records = [rec for chunk in _map(_volume_chunk, jobs, workers) for rec in chunk]
    return pd.DataFrame.from_records(records)


def _volume_chunk(volumes: list[tuple], hausdorff: bool) -> list[dict]:
    records = []
    for (patient, phase, model), first, p, g in volumes:
        dice, _ = overlap.dice_batch(p[None], g[None])
        rec = {
            "patient": patient,
            "group": first["group"],
            "phase": phase,
            "model": model,
            "split": first["split"],
            "fold": int(first["fold"]),
            "n_slices": len(p),
        }
        for j, name in enumerate(CLASSES):
            rec[f"dice_{name}"] = float(dice[0, j])
        rec["dice_mean"] = float(dice[0].mean())
        spacing = (float(first["thickness"]), float(first["spacing_row"]), float(first["spacing_col"]))
        scores = overlap.hausdorff_per_class(p, g, spacing) if hausdorff else {}
        for label, name in CLASS_NAMES.items():
            score = scores.get(label)
            rec[f"hd_{name}"] = score.hd if score else np.nan
            rec[f"hd95_{name}"] = score.hd95 if score else np.nan
        records.append(rec)
    return records


INDICES = ("lv_edv", "lv_esv", "lv_ef", "rv_edv", "rv_esv", "rv_ef", "myo_mass")
"""Clinical indices: volumes in mL, ejection fractions in %, myocardial mass at ED in g."""


def clinical_table(index: pd.DataFrame, pred: np.ndarray, gt: np.ndarray) -> pd.DataFrame:
    """Per patient × model: the ACDC clinical indices from predicted and reference masks.

    Columns ``<index>_pred`` and ``<index>_gt`` for each of :data:`INDICES`; patients lacking
    either phase are left out.
    """
    # (patient, model) -> phase -> "pred"/"gt" -> structure -> mL
    vols: dict[tuple[str, str], dict[str, dict[str, dict[str, float]]]] = {}
    for (patient, phase, model), rows in volume_groups(index):
        first = index.iloc[rows[0]]
        spacing = (float(first["spacing_row"]), float(first["spacing_col"]))
        thickness = float(first["thickness"])
        vols.setdefault((patient, model), {})[phase] = {
            src: clinical.volumes_ml(masks, spacing, thickness)
            for src, masks in (("pred", pred[rows]), ("gt", gt[rows]))
        }
    records = []
    for (patient, model), phases in sorted(vols.items()):
        if set(phases) != set(PHASES):
            continue
        group = index.loc[index.patient == patient, "group"].iloc[0]
        rec: dict[str, object] = {"patient": patient, "group": group, "model": model}
        for src in ("pred", "gt"):
            ed, es = phases["ED"][src], phases["ES"][src]
            rec[f"lv_edv_{src}"], rec[f"lv_esv_{src}"] = ed["lv"], es["lv"]
            rec[f"lv_ef_{src}"] = clinical.ejection_fraction(ed["lv"], es["lv"])
            rec[f"rv_edv_{src}"], rec[f"rv_esv_{src}"] = ed["rv"], es["rv"]
            rec[f"rv_ef_{src}"] = clinical.ejection_fraction(ed["rv"], es["rv"])
            rec[f"myo_mass_{src}"] = clinical.myocardial_mass(ed["myo"])
        records.append(rec)
    return pd.DataFrame.from_records(records)


def clinical_agreement(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and index: correlation, bias, std of differences, MAE (ACDC challenge style)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, part in table.groupby("model") if len(table) else []:
        out[str(model)] = {
            name: clinical.agreement(part[f"{name}_pred"].to_numpy(), part[f"{name}_gt"].to_numpy()) for name in INDICES
        }
    return out


def overview(table: pd.DataFrame, volumes: pd.DataFrame) -> dict[str, Any]:
    """The means a terminal shows, each with the number of slices or volumes it covers.

    Dice means cover every slice (volume), with the ACDC conventions for empty masks, as in the
    summary. Distances cover only the slices (volumes) where *both* masks hold the structure:
    a structure absent from both has HD 0 by convention, which says nothing about its contour,
    and one absent from one mask has no HD at all.

    Args:
        table: :func:`slice_metrics` output.
        volumes: :func:`volume_metrics` output for the same rows.

    Returns:
        ``{"slices": {"n": N, "dice": {c: (mean, n)}, "hd95_mm": {c: (mean, n)}},
        "volumes": {"n": V, "dice": {...}, "hd_mm": {...}}}`` for ``c`` in rv, myo, lv (and
        ``mean`` for Dice); a mean is None where it covers nothing.
    """
    slices = table.reset_index(drop=True)
    out: dict[str, Any] = {
        "slices": {"n": len(slices), "dice": {}, "hd95_mm": {}},
        "volumes": {"n": len(volumes), "dice": {}, "hd_mm": {}},
    }
    for name in [*CLASSES, "mean"]:
        out["slices"]["dice"][name] = _mean_n(slices.get(f"dice_{name}"))
        out["volumes"]["dice"][name] = _mean_n(volumes.get(f"dice_{name}"))
    for name in CLASSES:
        both = slices[f"dice_{name}_conv"] == overlap.Convention.NORMAL.value
        out["slices"]["hd95_mm"][name] = _mean_n(slices[f"hd95_{name}"][both])
        if len(volumes):
            # A volume lacks the structure in both masks exactly when every slice of it does.
            empty = (
                (slices[f"dice_{name}_conv"] == overlap.Convention.BOTH_EMPTY.value)
                .groupby([slices[k] for k in VOLUME_KEY], sort=False)
                .all()
            )
            key = pd.MultiIndex.from_frame(volumes[list(VOLUME_KEY)])
            present = ~empty.reindex(key).fillna(False).to_numpy(bool)
            out["volumes"]["hd_mm"][name] = _mean_n(volumes[f"hd_{name}"][present])
        else:
            out["volumes"]["hd_mm"][name] = (None, 0)
    return out


def _mean_n(values: pd.Series | None) -> tuple[float | None, int]:
    """(mean of the finite values or None, their count)."""
    if values is None:
        return None, 0
    finite = values[np.isfinite(values.to_numpy(np.float64))].astype(np.float64)
    return (float(finite.mean()) if len(finite) else None), len(finite)
