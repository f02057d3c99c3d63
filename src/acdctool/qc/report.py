"""What a QC run tells a human: flags, reasons in words, the ranked review list; and reading it back.

A QC folder (``acdctool qc``) holds ``slices.csv``, ``patients.csv``, ``review.csv``,
``flags.csv``, ``summary.json`` and a figure. :func:`read_qc_dir` reads the tables back (for
``eval --qc``), :func:`score_against_truth` scores them against true Dice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from acdctool.conventions import CLASSES, ROW_KEY
from acdctool.errors import BadInputError, InputMissingError
from acdctool.qc.fit import score_tables
from acdctool.qc.patients import PATIENT_KEY
from acdctool.qc.scoring import LEVELS

__all__ = ["slice_reasons", "patient_reasons", "review_table", "flags_table", "QcResult", "read_qc_dir"]

# thresholds of the words only (they never change a prediction)
_AGREE, _JUMP = 0.85, 0.5


def slice_reasons(t: pd.DataFrame) -> list[str]:
    """Why each slice may be wrong, in words (``;``-separated; empty when nothing stands out).

    Example:
        >>> t = pd.DataFrame({"valid": [0], "failed": ["holes_in_lv"], "empty": [0], "missing_mid": [0],
        ...                   "jump_max": [0.1], "nvae_dice_mean": [0.6]})
        >>> slice_reasons(t)
        ['anatomically invalid (holes_in_lv); NVAE disagrees (Dice 0.60)']
    """
    out = []
    for r in t.to_dict("records"):
        words = []
        if not r["valid"]:
            words.append(f"anatomically invalid ({str(r['failed']).replace(';', ', ')})")
        if r["empty"]:
            words.append("empty mask")
        if r["missing_mid"]:
            words.append("structure missing in a mid slice")
        if r["jump_max"] > _JUMP:
            worst = max(CLASSES, key=lambda c: r.get(f"jump_{c}", 0.0))
            words.append(f"{worst.upper()} area jumps vs neighbours ({r['jump_max']:.2f})")
        if r.get("nvae_dice_mean", 1.0) < _AGREE:
            words.append(f"NVAE disagrees (Dice {r['nvae_dice_mean']:.2f})")
        if r.get("prob_dice_mean", 1.0) < _AGREE:
            words.append(f"uncertain softmax (soft Dice {r['prob_dice_mean']:.2f})")
        out.append("; ".join(words))
    return out


def patient_reasons(p: pd.DataFrame) -> list[str]:
    """Why each patient may be wrong, in words."""
    out = []
    for r in p.to_dict("records"):
        words = []
        for c in ("lv", "rv"):
            if r.get(f"ed_gt_es_{c}") == 0:
                words.append(f"{c.upper()} not larger at ED than at ES")
        if r.get("n_flagged", 0):
            words.append(f"{int(r['n_flagged'])} of {int(r['n_slices'])} slices flagged")
        if r.get("missing_mid", 0):
            words.append(f"{int(r['missing_mid'])} mid slices missing a structure")
        out.append("; ".join(words))
    return out


def review_table(
    slices: pd.DataFrame, patients: pd.DataFrame, score: str, patient_score: str | None = None
) -> pd.DataFrame:
    """Slices ranked for review: worst first (lowest ``pred_dice``, or highest ``risk``).

    Args:
        slices: the QC slice table with ``flag`` and ``reasons``.
        patients: the patient table; the score its patients are flagged by joins each slice
            as ``patient_<patient_score>``.
        score: ``pred_dice`` (calibrated) or ``risk``.
        patient_score: the patients' score when another (``pred_vdice``); default ``score``.

    Example:
        >>> s = pd.DataFrame({"patient": ["p1", "p1"], "phase": ["ED", "ED"], "slice": [0, 1], "model": "unet",
        ...                   "position": ["base", "apex"], "pred_dice": [0.9, 0.5], "flag": [0, 1],
        ...                   "reasons": ["", "holes"]})
        >>> p = pd.DataFrame({"patient": ["p1"], "model": ["unet"], "pred_dice": [0.7], "pred_vdice": [0.8]})
        >>> t = review_table(s, p, "pred_dice", "pred_vdice")
        >>> t["slice"].tolist(), t["patient_pred_vdice"].tolist()
        ([1, 0], [0.8, 0.8])
    """
    ascending = score == "pred_dice"
    patient_score = patient_score or score
    cols = [*ROW_KEY, "position", score, "flag", "reasons"]
    t = slices[cols].merge(
        patients[[*PATIENT_KEY, patient_score]].rename(columns={patient_score: f"patient_{patient_score}"}),
        on=list(PATIENT_KEY),
        how="left",
    )
    t = t.sort_values([score, *ROW_KEY], ascending=[ascending, *[True] * len(ROW_KEY)], kind="stable")
    t.insert(0, "rank", np.arange(1, len(t) + 1))
    return t.reset_index(drop=True)


def flags_table(
    slices: pd.DataFrame, patients: pd.DataFrame, score: str, patient_score: str | None = None
) -> pd.DataFrame:
    """Flagged patients then flagged slices, each worst first: ``level``, keys, the scores, reasons.

    Args:
        score: the slices' (and by default the patients') score, ``pred_dice`` or ``risk``.
        patient_score: the patients' when another (``pred_vdice``): its own column, empty
            for the slices.
    """
    patient_score = patient_score or score
    p = patients[patients["flag"].astype(bool)].sort_values(
        patient_score, ascending=patient_score != "risk", kind="stable"
    )
    s = slices[slices["flag"].astype(bool)].sort_values(score, ascending=score != "risk", kind="stable")
    scores = list(dict.fromkeys([score, patient_score]))
    cols = [*ROW_KEY, *scores, "reasons"]
    p = p.assign(level="patient", phase="", slice=-1)[["level", *cols]]
    s = s.assign(level="slice", **{c: np.nan for c in scores if c not in s.columns})[["level", *cols]]
    return pd.concat([p, s], ignore_index=True)


@dataclass
class QcResult:
    """A QC folder read back."""

    path: Path
    slices: pd.DataFrame
    patients: pd.DataFrame
    summary: dict[str, Any]

    @property
    def calibrated(self) -> bool:
        return "pred_dice" in self.slices.columns


def read_qc_dir(path: Path) -> QcResult:
    """Read a QC folder written by ``acdctool qc``.

    Raises:
        InputMissingError: no such folder. BadInputError: not a QC folder (files missing).
    """
    path = Path(path)
    if not path.is_dir():
        raise InputMissingError(f"{path}: no such QC folder")
    files = [path / n for n in ("slices.csv", "patients.csv", "summary.json")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BadInputError(f"{path}: not a QC folder from `acdctool qc` ({', '.join(missing)} missing)")
    slices = pd.read_csv(files[0], keep_default_na=False, na_values=[""], dtype={"model": str, "phase": str})
    patients = pd.read_csv(files[1], keep_default_na=False, na_values=[""], dtype={"model": str})
    for t in (slices, patients):
        t["model"] = t["model"].fillna("")
    return QcResult(path, slices, patients, json.loads(files[2].read_text()))


def score_against_truth(
    qc: QcResult,
    truth: pd.DataFrame,
    slice_threshold: float,
    patient_threshold: float,
    key: Sequence[str] = ROW_KEY,
    volumes: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Score a QC run against true per-slice Dice (from ``eval``).

    Args:
        qc: the QC folder.
        truth: one row per slice with the ``key`` columns and ``dice_mean`` (ACDC conventions).
        slice_threshold, patient_threshold: bad slice / bad patient below these.
        volumes: ``eval``'s volume table (``patient``, ``model``, ``dice_mean`` per volume):
            also scores the patients' volume Dice (level ``patient_volume``).

    Returns:
        :func:`acdctool.qc.fit.score_tables`'s dict plus ``calibrated`` and ``matched`` rows.

    Raises:
        BadInputError: QC rows without a slice in ``truth`` or the reverse (another file).
    """
    key = list(key)
    t = truth[[*key, "dice_mean"]].rename(columns={"dice_mean": "gt_dice"})
    s = qc.slices.drop(columns=[c for c in ("gt_dice",) if c in qc.slices.columns])
    merged = s.merge(t, on=key, how="inner", validate="one_to_one")
    if len(merged) != len(s) or len(merged) != len(t):
        raise BadInputError(
            f"{qc.path}: its {len(s)} slices match {len(merged)} of the {len(t)} evaluated ones "
            "(a QC run of another file?)"
        )
    gt = merged.groupby(list(PATIENT_KEY))["gt_dice"].mean().rename("gt_dice").reset_index()
    p = qc.patients.drop(columns=[c for c in ("gt_dice", "gt_vdice") if c in qc.patients.columns]).merge(
        gt, on=list(PATIENT_KEY), how="left"
    )
    if volumes is not None and len(volumes):
        v = volumes.assign(model=volumes["model"].fillna("").astype(str))
        vd = v.groupby(list(PATIENT_KEY))["dice_mean"].mean().rename("gt_vdice").reset_index()
        p = p.merge(vd, on=list(PATIENT_KEY), how="left")
        if bool(p["gt_vdice"].isna().any()):
            p = p.drop(columns="gt_vdice")  # volumes of other patients: not this QC's file
    out = score_tables(merged, p, slice_threshold, patient_threshold)
    out.update(calibrated=qc.calibrated, matched=len(merged), qc_dir=str(qc.path.resolve()))
    return out


def scores_frame(scores: dict[str, Any]) -> pd.DataFrame:
    """The scores as a flat table: ``level``, ``score`` (``predicted_dice`` or a signal), ``auc``,
    ``spearman``, ``mae``, ``n``, ``n_bad``."""
    rows = []
    for level in LEVELS:
        s = scores.get(level)
        if not s:
            continue
        base = {"level": level, "n": s["n"], "n_bad": s["n_bad"], "threshold": s["threshold"]}
        if "predicted" in s:
            rows.append({**base, "score": "predicted_dice", **s["predicted"]})
        for name, v in s["signals"].items():
            rows.append({**base, "score": name, "auc": v["auc"], "spearman": v["spearman"], "mae": np.nan})
    return pd.DataFrame(rows, columns=["level", "score", "auc", "spearman", "mae", "n", "n_bad", "threshold"])
