"""Fit the QC combination on slices with ground truth, and score it out of fold.

:func:`fit_qc` takes a QC slice table with the true Dice (``gt_dice``) of training patients
and:

1. **out of fold**: for each outer fold (the file's ``fold`` column; patients dealt into 5
   parts when there are fewer than two folds), fits the slice model on the other folds
   (:func:`acdctool.qc.hurdle.fit_slice_model`, isotonic maps on cross-fitted scores over the
   remaining folds), predicts the held-out fold, and fits the ``linear`` patient model on the
   training patients' cross-fitted slice predictions, and (when the table has the truth's
   pixel counts) the volume-Dice line (:mod:`acdctool.qc.volume_dice`);
2. scores the out-of-fold predictions (:func:`acdctool.qc.scoring.score_level`): the
   combination and every single signal, per slice and per patient, both patient models, and
   the predicted volume Dice (``patient_volume``);
3. keeps the patient model with the lower out-of-fold MAE (``mean`` on ties, and always
   ``mean`` with fewer than :data:`MIN_PATIENTS_LINEAR` patients: too few to fit a second
   model on);
   with ``boost``, also fits boosted trees per outer fold (:mod:`acdctool.qc.boost`) and keeps
   the average of their prediction and the slice model's median when its out-of-fold MAE is
   lower (``slice_models`` in the scores);
4. refits everything on all the given patients: the model a calibration file stores.

Every number in ``scores`` therefore comes from predictions of models that never saw the
patient; the final model is fitted on all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from acdctool.conventions import CLASSES
from acdctool.qc.boost import Booster, BoostSettings, fit_booster
from acdctool.qc.features import SIGNALS, feature_matrix, feature_names, groups_of
from acdctool.qc.hurdle import SliceModel, fit_slice_model
from acdctool.qc.model import DEFAULT_ALPHA, LinearIsotonic, fit, parts_of
from acdctool.qc.patients import PATIENT_FEATURES, PATIENT_KEY, patient_features, patient_table
from acdctool.qc.scoring import PATIENT_THRESHOLD, SLICE_THRESHOLD, score_level
from acdctool.qc.volume_dice import VOLUME_SIGNALS, VolumeModel, fit_volume_model, volume_feature

__all__ = ["QcFit", "fit_qc", "class_inputs", "score_tables", "score_volumes", "MIN_PATIENTS_LINEAR"]

MIN_PATIENTS_LINEAR = 20
"""Fewest patients for the ``linear`` patient model to be considered."""


@dataclass
class QcFit:
    """What :func:`fit_qc` returns."""

    slice_model: SliceModel
    patient_type: str
    patient_model: LinearIsotonic | None
    oof_slices: pd.DataFrame
    """The input's key columns, ``gt_dice`` and the out-of-fold ``pred_dice`` (median) and ``exp_dice`` (mean)."""
    oof_patients: pd.DataFrame
    """Per patient: ``gt_dice``, ``pred_dice`` (chosen model), ``pred_mean``, ``pred_linear``,
    and with the truth's pixel counts ``gt_vdice``, ``pred_vdice``."""
    scores: dict[str, Any]
    volume_model: VolumeModel | None = None
    """Predicts each patient's volume Dice (None: the table had no truth pixel counts)."""
    booster: Booster | None = None
    """Boosted trees averaged with the slice model's median (None: not fitted, or the blend did
    not predict better out of fold)."""


def class_inputs(
    table: pd.DataFrame, features: Mapping[str, Sequence[str]]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each class's feature matrix and whether each mask holds each class ``(N, 3)``."""
    xs = {c: feature_matrix(table, list(features[c])) for c in CLASSES}
    present = np.stack([table[f"area_{c}"].to_numpy() > 0 for c in CLASSES], axis=1)
    return xs, present


def fit_qc(
    table: pd.DataFrame,
    features: Mapping[str, Sequence[str]],
    *,
    key: Sequence[str] = PATIENT_KEY,
    alpha: float = DEFAULT_ALPHA,
    boost: BoostSettings | None = None,
    slice_threshold: float = SLICE_THRESHOLD,
    patient_threshold: float = PATIENT_THRESHOLD,
) -> QcFit:
    """Fit and score the QC combination (see the module docstring).

    Args:
        table: QC slice table with the truth columns (``gt_dice``, ``gt_dice_<c>``,
            ``gt_has_<c>``), ``fold`` and ``patient`` (training patients).
        features: class → its feature names (:func:`acdctool.qc.features.feature_names`).
        key: columns identifying a patient in ``table``.
        alpha: ridge / logistic penalty of every model.
        boost: also fit boosted trees on every feature of the groups in use and average them
            with the slice model's median, kept when that lowers the out-of-fold MAE (None: not).
        slice_threshold, patient_threshold: what counts as a bad slice / patient in the scores.

    Raises:
        BadInputError: the table lacks signals some feature needs.
        ValueError: fewer than two patients.
    """
    table = table.reset_index(drop=True)
    feature_groups = groups_of([f for names in features.values() for f in names])
    xs, present = class_inputs(table, features)
    has = np.stack([table[f"gt_has_{c}"].to_numpy() > 0 for c in CLASSES], axis=1)
    dice = np.stack([table[f"gt_dice_{c}"].to_numpy(np.float64) for c in CLASSES], axis=1)
    y = table["gt_dice"].to_numpy(np.float64)
    folds, groups = table["fold"].to_numpy(), table["patient"].to_numpy()
    if pd.unique(groups).size < 2:
        raise ValueError("need at least two patients to fit and score out of fold")
    outer = parts_of(folds, groups)
    boost_names = feature_names(feature_groups) if boost is not None else []
    xb = feature_matrix(table, boost_names) if boost is not None else None
    oof, oof_exp, oof_boost = np.empty(len(y)), np.empty(len(y)), np.empty(len(y))
    pats: list[pd.DataFrame] = []
    for f in np.unique(outer):
        test = outer == f
        tr = ~test
        model, inner = fit_slice_model(
            {c: x[tr] for c, x in xs.items()},
            present[tr],
            has[tr],
            dice[tr],
            y[tr],
            parts_of(folds[tr], groups[tr]),
            features,
            alpha,
        )
        held_x = {c: x[test] for c, x in xs.items()}
        oof[test], oof_exp[test] = model.predictions(held_x, present[test])
        if xb is not None:
            oof_boost[test] = fit_booster(xb[tr], y[tr], boost_names, boost).predict(xb[test])
        train_patients = patient_table(table[tr].assign(exp_dice=inner), key)
        pmodel = _patient_model(train_patients, alpha)
        held = patient_table(table[test].assign(pred_dice=oof[test], exp_dice=oof_exp[test]), key)
        held["pred_linear"] = pmodel.predict(patient_features(held))
        if "gt_vdice" in held.columns:
            vmodel = fit_volume_model(train_patients, volume_feature(list(held.columns), feature_groups))
            held["pred_vdice"] = vmodel.predict(held)
        pats.append(held)
    patients = pd.concat(pats, ignore_index=True).sort_values(list(key), kind="stable").reset_index(drop=True)
    patient_models: dict[str, Any] = {
        m: _brief(patients[f"pred_{m}"], patients["gt_dice"], patient_threshold) for m in ("mean", "linear")
    }
    enough = patients["patient"].nunique() >= MIN_PATIENTS_LINEAR
    ptype = "linear" if enough and patient_models["linear"]["mae"] < patient_models["mean"]["mae"] else "mean"
    patient_models["chosen"] = ptype
    patients["pred_dice"] = patients["pred_linear"] if ptype == "linear" else patients["pred_mean"]
    slice_models: dict[str, Any] = {"median": _brief(oof, y, slice_threshold)}
    stype = "median"
    if xb is not None:
        blend = np.clip((oof + oof_boost) / 2, 0.0, 1.0)
        slice_models["blend"] = _brief(blend, y, slice_threshold)
        if slice_models["blend"]["mae"] < slice_models["median"]["mae"]:
            oof, stype = blend, "blend"
    slice_models["chosen"] = stype
    slices = table.assign(pred_dice=oof, exp_dice=oof_exp)
    scores = score_tables(slices, patients, slice_threshold, patient_threshold)
    scores["patient_models"], scores["slice_models"] = patient_models, slice_models
    final, inner = fit_slice_model(xs, present, has, dice, y, parts_of(folds, groups), features, alpha)
    all_patients = patient_table(table.assign(exp_dice=inner), key)
    final_patient = _patient_model(all_patients, alpha) if ptype == "linear" else None
    volume_model = None
    if "pred_vdice" in patients.columns:
        volume_model = fit_volume_model(all_patients, volume_feature(list(all_patients.columns), feature_groups))
        scores["patient_volume"]["feature"] = volume_model.feature
    keep = [c for c in (*key, "phase", "slice", "fold", "gt_dice", "pred_dice", "exp_dice") if c in slices.columns]
    cols = [*key, "fold", "gt_dice", "pred_dice", "pred_mean", "pred_linear", "gt_vdice", "pred_vdice"]
    out_patients = patients[[c for c in cols if c in patients.columns]]
    booster = fit_booster(xb, y, boost_names, boost) if xb is not None and stype == "blend" else None
    kept = slices[list(dict.fromkeys(keep))]
    return QcFit(final, ptype, final_patient, kept, out_patients, scores, volume_model, booster)


def score_volumes(patients: pd.DataFrame, threshold: float = PATIENT_THRESHOLD) -> dict[str, Any]:
    """Scores of the predicted volume Dice (``pred_vdice``), of the volume signals and of the
    slice signals' patient means against ``gt_vdice``: :func:`acdctool.qc.scoring.score_level`'s
    dict (level ``patient_volume``)."""
    # the volume signals, then the slice signals' patient means for comparison
    sig = _signals(patients, {**VOLUME_SIGNALS, **SIGNALS})
    pred = patients["pred_vdice"].to_numpy(np.float64) if "pred_vdice" in patients.columns else None
    return score_level(patients["gt_vdice"].to_numpy(np.float64), threshold, pred, sig)


def _signals(t: pd.DataFrame, directions: Mapping[str, int]) -> dict[str, tuple[np.ndarray, int]]:
    """:func:`acdctool.qc.scoring.score_level`'s ``signals``: those of ``directions`` ``t`` has."""
    return {name: (t[name].to_numpy(np.float64), sign) for name, sign in directions.items() if name in t.columns}


def _patient_model(pt: pd.DataFrame, alpha: float) -> LinearIsotonic:
    parts = parts_of(pt["fold"].to_numpy(), pt["patient"].to_numpy())
    model, _ = fit(patient_features(pt), pt["gt_dice"].to_numpy(), parts, list(PATIENT_FEATURES), alpha)
    return model


def _brief(pred: np.ndarray | pd.Series, true: np.ndarray | pd.Series, threshold: float) -> dict[str, float]:
    """MAE, AUC and Spearman of one candidate prediction (slice or patient model)."""
    s = score_level(np.asarray(true, np.float64), threshold, np.asarray(pred, np.float64))["predicted"]
    return {"mae": s["mae"], "auc": s["auc"], "spearman": s["spearman"]}


def score_tables(
    slices: pd.DataFrame,
    patients: pd.DataFrame,
    slice_threshold: float = SLICE_THRESHOLD,
    patient_threshold: float = PATIENT_THRESHOLD,
) -> dict[str, Any]:
    """Scores of predicted Dice and of every single signal, per slice and per patient.

    Args:
        slices: QC slice table with ``gt_dice`` and, when calibrated, ``pred_dice``.
        patients: its patient table (:func:`acdctool.qc.patients.patient_table`) with
            ``gt_dice`` and, when calibrated, ``pred_dice``; patient signals are slice means.

    Returns:
        ``{"slice": score_level(...), "patient": score_level(...)}``, and
        ``"patient_volume"`` (:func:`score_volumes`) when ``patients`` has ``gt_vdice``.
    """
    out: dict[str, Any] = {}
    for level, t, thr in (("slice", slices, slice_threshold), ("patient", patients, patient_threshold)):
        sig = _signals(t, SIGNALS)
        pred = t["pred_dice"].to_numpy(np.float64) if "pred_dice" in t.columns else None
        out[level] = score_level(t["gt_dice"].to_numpy(np.float64), thr, pred, sig)
    if "gt_vdice" in patients.columns:
        out["patient_volume"] = score_volumes(patients, patient_threshold)
    return out
