"""Patient-level QC: a patient's slices summarised, and the patient's predicted Dice.

A patient here is a (patient, model) pair of one file: the slices of both its volumes (ED
and ES) as one model segmented them. Its *true* Dice is the mean over those slices of the
per-slice mean Dice (the quantity ``eval --qc`` scores against; the challenge's 3D Dice per volume is
:mod:`acdctool.qc.volume_dice`'s). Its predicted Dice is
either the mean of its slices' predictions (``mean``) or a small ridge + isotonic model on
:data:`PATIENT_FEATURES` (``linear``); a calibration keeps whichever predicted better out of fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from acdctool.qc.volume import patient_volumes
from acdctool.qc.volume_dice import volume_columns

if TYPE_CHECKING:
    from pandas.core.groupby import SeriesGroupBy

__all__ = ["PATIENT_KEY", "PATIENT_FEATURES", "patient_table", "patient_features", "LOW_SLICE"]

PATIENT_KEY: tuple[str, ...] = ("patient", "model")
"""Rows of ``patients.csv``: one per patient and segmentation model."""
LOW_SLICE = 0.8
"""A slice whose predicted Dice is below this counts in ``frac_low``."""
PATIENT_FEATURES: tuple[str, ...] = ("pred_mean", "pred_min", "pred_q25", "frac_low", "frac_invalid", "ed_es_wrong")
"""Inputs of the ``linear`` patient model, from the patient's slices and volumes."""

_MEANS = (
    "entropy_fg",
    "entropy_band",
    "margin_fg",
    "uncertain_frac",
    "prob_dice_mean",
    "nvae_dice_mean",
    "nvae_dice_min",
    "nvae_nll",
    "n_failed",
    "jump_max",
    "risk",
)


def patient_table(slices: pd.DataFrame, key: Sequence[str] = PATIENT_KEY) -> pd.DataFrame:
    """One row per patient: counts, mean signals, volumes and ED > ES checks.

    Args:
        slices: the slice table (signals, ``valid``, ``missing_mid``, areas, ``thickness``,
            and ``pred_dice`` / ``gt_dice`` when present).
        key: columns that identify a patient.

    Returns:
        ``key`` columns, ``group``, ``split``, ``fold``, ``n_slices``, ``n_invalid``,
        ``frac_invalid``, ``missing_mid``, the mean of every signal present (same names),
        ``nvae_dice_worst`` (the lowest slice's), ED/ES volumes (mL) and ``ed_gt_es_lv/rv``,
        ``ed_es_wrong`` (1 when LV or RV is not larger at ED), and, when the slice table has
        them, ``pred_mean``/``pred_min``/``pred_q25``/``frac_low`` of the slices' expected
        Dice (``exp_dice``, else their predicted ``pred_dice``) and ``gt_dice`` (mean of the
        slices' true Dice); the volume-Dice columns ``prob_vdice``, ``nvae_vdice``,
        ``gt_vdice`` that the slices allow (:func:`acdctool.qc.volume_dice.volume_columns`).
    """
    key = list(key)
    g = slices.groupby(key, sort=True)
    out = g.agg(
        group=("group", "first"),
        split=("split", "first"),
        fold=("fold", "first"),
        n_slices=("valid", "size"),
        n_invalid=("valid", lambda v: int((np.asarray(v) == 0).sum())),
        missing_mid=("missing_mid", "sum"),
    )
    out["frac_invalid"] = out["n_invalid"] / out["n_slices"]
    means = [c for c in _MEANS if c in slices.columns]
    out = out.join(g[means].mean())
    if "nvae_dice_min" in slices.columns:
        out["nvae_dice_worst"] = g["nvae_dice_min"].min()
    expected = "exp_dice" if "exp_dice" in slices.columns else "pred_dice"
    if expected in slices.columns:  # a patient's Dice is a mean: average the slices' expected Dice
        out = out.join(_prediction_summary(g[expected]))
    if "gt_dice" in slices.columns:
        out["gt_dice"] = g["gt_dice"].mean()
    out = out.reset_index().merge(patient_volumes(slices, key), on=key, how="left")
    out = out.merge(volume_columns(slices, key), on=key, how="left")
    wrong = (out["ed_gt_es_lv"] == 0) | (out["ed_gt_es_rv"] == 0)
    out["ed_es_wrong"] = wrong.astype(np.int8)
    return out


def _prediction_summary(pred: SeriesGroupBy) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pred_mean": pred.mean(),
            "pred_min": pred.min(),
            "pred_q25": pred.quantile(0.25),
            "frac_low": pred.apply(lambda v: float((np.asarray(v) < LOW_SLICE).mean())),
        }
    )


def patient_features(table: pd.DataFrame) -> np.ndarray:
    """The ``(P, len(PATIENT_FEATURES))`` matrix of :func:`patient_table`'s output."""
    t = table.copy()
    if "ed_es_wrong" not in t.columns:
        t["ed_es_wrong"] = 0
    return t[list(PATIENT_FEATURES)].to_numpy(np.float64)
