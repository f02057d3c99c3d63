"""A patient's *volume* Dice, true and predicted: the ACDC challenge's measure of a segmentation.

``eval`` reports two Dice per patient: the mean of its slices' Dice (every slice weighs the
same, so a 20 px apical LV counts as much as a mid-ventricular one) and the 3D Dice of each
volume (ED, ES) per class, the challenge's metric (``volumes.csv``), whose pixels weigh the
same. The QC predicts both. For the second, per patient:

- ``gt_vdice`` (truth, never a signal): per volume and class ``2 Σ|P∩G| / Σ(|P| + |G|)`` over
  its slices (both empty → 1), averaged over the classes, then over the volumes: exactly
  ``eval``'s ``volumes.csv`` ``dice_mean`` averaged over the patient's volumes;
- ``prob_vdice`` / ``nvae_vdice`` (signals): the slices' soft Dice of the softmax with the mask
  (``prob_dice_<c>``) / Dice with the NVAE reconstruction (``nvae_dice_<c>``), averaged over
  each volume's slices weighted by the mask's area of the class (a volume's Dice weighs its
  slices by their areas), then over classes and volumes as the truth;
- ``pred_vdice``: a :class:`VolumeModel`, a straight line fitted on training patients from
  the first of :data:`VOLUME_FEATURES` the run has. A line keeps the signal's ranking (an
  isotonic step would tie patients and lower the rank correlation); on the five-fold ACDC
  masks no second input improved the out-of-fold error (README).

Example:
    >>> t = pd.DataFrame({"patient": ["a", "a"], "model": ["", ""], "phase": ["ED", "ED"],
    ...                   "area_rv": [100.0, 300.0], "prob_dice_rv": [0.5, 0.9],
    ...                   "area_myo": [0.0, 0.0], "prob_dice_myo": [1.0, 1.0],
    ...                   "area_lv": [0.0, 0.0], "prob_dice_lv": [1.0, 1.0]})
    >>> round(float(volume_columns(t)["prob_vdice"].iloc[0]), 4)  # RV (100·0.5 + 300·0.9)/400 = 0.8
    0.9333
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from acdctool.config import QcFeatures as FeatureGroup
from acdctool.conventions import CLASSES

__all__ = [
    "VOLUME_FEATURES",
    "VOLUME_SIGNALS",
    "TRUTH_COLUMNS",
    "VolumeModel",
    "volume_columns",
    "fit_volume_model",
    "volume_feature",
]

VOLUME_FEATURES: tuple[str, ...] = ("prob_vdice", "nvae_vdice", "pred_mean")
"""Inputs of the volume model, best first: the softmax's (needs ``probs``), the NVAE's (needs
``--nvae``), the mean of the slices' expected Dice (always there once the slice model ran)."""
_WEIGHTED = {"prob_vdice": "prob_dice", "nvae_vdice": "nvae_dice"}
VOLUME_SIGNALS = {name: -1 for name in _WEIGHTED}
"""The volume signals scored alone, with their direction (−1: higher is better), as
:data:`acdctool.qc.features.SIGNALS`."""
TRUTH_COLUMNS = tuple(f"gt_{k}_px_{c}" for c in CLASSES for k in ("overlap", "sum"))
"""Slice-table truth columns the true volume Dice is built from (px): ``|P∩G|`` and ``|P| + |G|``."""


def volume_columns(slices: pd.DataFrame, key: Sequence[str] = ("patient", "model")) -> pd.DataFrame:
    """Per patient: ``prob_vdice``, ``nvae_vdice`` and ``gt_vdice``, those the slices allow.

    Args:
        slices: a QC slice table (``phase``, ``area_<c>``, and ``prob_dice_<c>``,
            ``nvae_dice_<c>``, :data:`TRUTH_COLUMNS` where present).
        key: columns identifying a patient.

    Returns:
        One row per patient: ``key`` and the columns it could compute (none but ``key``
        when the table has none of their inputs).
    """
    key = list(key)
    vol_key = [*key, "phase"]
    parts: dict[str, np.ndarray] = {}
    for name, prefix in _WEIGHTED.items():
        if all(f"{prefix}_{c}" in slices.columns for c in CLASSES):
            for c in CLASSES:
                w = slices[f"area_{c}"].to_numpy(np.float64)
                parts[f"{name}:w:{c}"] = w
                parts[f"{name}:wv:{c}"] = w * slices[f"{prefix}_{c}"].to_numpy(np.float64)
    truth = all(c in slices.columns for c in TRUTH_COLUMNS)
    if truth:
        parts.update({c: slices[c].to_numpy(np.float64) for c in TRUTH_COLUMNS})
    sums = pd.DataFrame(parts, index=slices.index).join(slices[vol_key]).groupby(vol_key, sort=True).sum()
    out = pd.DataFrame(index=sums.index)
    for name in _WEIGHTED:
        if f"{name}:w:{CLASSES[0]}" in sums.columns:
            # a class absent from the whole mask volume: nothing to weigh, 1 as ACDC's both-empty
            out[name] = np.mean([_ratio(sums, f"{name}:wv:{c}", f"{name}:w:{c}", 1.0) for c in CLASSES], axis=0)
    if truth:
        out["gt_vdice"] = np.mean([_ratio(sums, f"gt_overlap_px_{c}", f"gt_sum_px_{c}", 2.0) for c in CLASSES], axis=0)
    return out.groupby(level=key, sort=True).mean().reset_index()


def _ratio(sums: pd.DataFrame, num: str, den: str, factor: float) -> np.ndarray:
    """``factor · num / den`` per row, 1 where ``den`` is 0."""
    n, d = sums[num].to_numpy(np.float64), sums[den].to_numpy(np.float64)
    return np.where(d > 0, factor * n / np.maximum(d, 1e-12), 1.0)


def volume_feature(columns: Sequence[str], groups: Sequence[str] = ("mask", "probs", "nvae")) -> str:
    """The first of :data:`VOLUME_FEATURES` among ``columns`` whose feature group is allowed.

    Args:
        columns: a patient table's columns.
        groups: feature groups the calibration may use (``qc-calibrate --features``).

    Example:
        >>> volume_feature(["pred_mean", "prob_vdice", "nvae_vdice"], ["mask", "nvae"])
        'nvae_vdice'
    """
    allowed = {
        "prob_vdice": FeatureGroup.PROBS.value in groups,
        "nvae_vdice": FeatureGroup.NVAE.value in groups,
        "pred_mean": True,
    }
    return next(f for f in VOLUME_FEATURES if allowed[f] and (f in columns or f == "pred_mean"))


@dataclass(frozen=True)
class VolumeModel:
    """Predicted volume Dice ``clip(intercept + slope · feature, 0, 1)`` of a patient table."""

    feature: str
    intercept: float
    slope: float

    def predict(self, patients: pd.DataFrame) -> np.ndarray:
        """Predicted volume Dice ``(P,)`` of each row.

        Raises:
            KeyError: the table lacks the model's feature.
        """
        x = patients[self.feature].to_numpy(np.float64)
        return np.clip(self.intercept + self.slope * x, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "line", "feature": self.feature, "intercept": self.intercept, "slope": self.slope}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VolumeModel:
        """Rebuild from :meth:`to_dict`'s output.

        Raises:
            ValueError: another model type or an unknown feature.
        """
        if d.get("type") != "line":
            raise ValueError(f"volume model type {d.get('type')!r}, expected 'line'")
        if d["feature"] not in VOLUME_FEATURES:
            raise ValueError(f"volume model feature {d['feature']!r} is not one of {list(VOLUME_FEATURES)}")
        return cls(str(d["feature"]), float(d["intercept"]), float(d["slope"]))


def fit_volume_model(patients: pd.DataFrame, feature: str) -> VolumeModel:
    """Least-squares line of ``gt_vdice`` on ``feature`` over the patients (rows with both).

    Example:
        >>> p = pd.DataFrame({"prob_vdice": [0.8, 0.9, 1.0], "gt_vdice": [0.7, 0.8, 0.9]})
        >>> m = fit_volume_model(p, "prob_vdice")
        >>> round(m.slope, 6), round(m.intercept, 6)
        (1.0, -0.1)
    """
    x = patients[feature].to_numpy(np.float64)
    y = patients["gt_vdice"].to_numpy(np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0:
        raise ValueError("no patient with both the feature and the true volume Dice")
    var = float(np.var(x))
    slope = float(np.cov(x, y, bias=True)[0, 1] / var) if len(x) > 1 and var > 1e-12 else 0.0
    return VolumeModel(feature, float(y.mean() - slope * x.mean()), slope)
