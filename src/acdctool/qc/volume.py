"""QC signals of a slice within its volume, and of a patient's two volumes.

Per slice (columns added to the slice table; volumes are :data:`VOLUME_KEY` groups ordered
by ``slice``, base first in ACDC):

==================  =====================================================================
``z``               position in the volume, 0 (first slice, base) … 1 (last, apex)
``position``        ``base``/``mid``/``apex`` by thirds (as in ``eval``)
``jump_<c>``        area continuity of class c: ``|a − m| / max(a, m, 25 mm²)`` with ``a`` the
                    slice's area and ``m`` the mean of its neighbours' (0 … 1; 0 for a
                    one-slice volume). A structure that vanishes or doubles between
                    neighbours scores near 1; ``jump_max`` is the largest over classes
``rel_area_<c>``    area / largest area of class c in the volume (0 … 1)
``missing_mid``     1 for a mid slice lacking RV, MYO or LV
``nb_<c>``          neighbouring slices (0–2) whose mask holds class c
``end_<c>``         1 when the slice holds class c but a neighbour (or the volume's end)
                    does not: the first or last slice of the structure, where annotators
                    and nets disagree most on whether it is there at all
==================  =====================================================================

Per patient (:func:`patient_volumes`): the ED and ES volumes of LV, RV and MYO in mL (areas
× slice thickness) and whether ED > ES for the LV and the RV (1/0; NaN when a phase is missing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from acdctool.conventions import CLASSES, VOLUME_KEY
from acdctool.report.tables import position

__all__ = ["volume_signals", "patient_volumes", "JUMP_FLOOR_MM2"]

JUMP_FLOOR_MM2 = 25.0
"""Least denominator of the area jump (mm²): a few stray pixels never count as a full jump."""


def volume_signals(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``z``, ``position``, ``jump_*``, ``rel_area_*`` and ``missing_mid`` to a slice table.

    Args:
        table: one row per slice with the :data:`VOLUME_KEY` columns, ``slice``,
            ``n_slices`` and ``area_<c>`` (mm²) for each class.

    Returns:
        A copy with the new columns, rows in the same order.

    Example:
        >>> t = pd.DataFrame({"patient": "p", "phase": "ED", "model": "m", "slice": [0, 1, 2],
        ...                   "n_slices": 3, "area_rv": [0.0, 0, 0], "area_myo": [100.0, 100, 100],
        ...                   "area_lv": [100.0, 0, 100]})
        >>> volume_signals(t)["jump_lv"].round(2).tolist()
        [1.0, 1.0, 1.0]
    """
    out = table.copy()
    n = len(out)
    s, ns = out["slice"].to_numpy(), out["n_slices"].to_numpy()
    out["z"] = np.where(ns > 1, s / np.maximum(ns - 1, 1), 0.5).astype(np.float64)
    out["position"] = position(out["slice"], out["n_slices"]).to_numpy()
    jumps = {c: np.zeros(n) for c in CLASSES}
    rel = {c: np.zeros(n) for c in CLASSES}
    nbs = {c: np.zeros(n) for c in CLASSES}
    ends = {c: np.zeros(n) for c in CLASSES}
    if n:
        groups = out.reset_index(drop=True).groupby(list(VOLUME_KEY), sort=False).indices
        for members in groups.values():
            rows = members[np.argsort(s[members], kind="stable")]
            for c in CLASSES:
                a = out[f"area_{c}"].to_numpy(np.float64)[rows]
                jumps[c][rows] = _jumps(a)
                top = a.max()
                rel[c][rows] = a / top if top > 0 else 0.0
                has = (a > 0).astype(np.float64)
                left, right = np.r_[0.0, has[:-1]], np.r_[has[1:], 0.0]
                nbs[c][rows] = left + right
                ends[c][rows] = has * ((left == 0) | (right == 0))
    for c in CLASSES:
        out[f"jump_{c}"] = jumps[c]
    out["jump_max"] = np.max([jumps[c] for c in CLASSES], axis=0) if n else np.zeros(0)
    for c in CLASSES:
        out[f"rel_area_{c}"] = rel[c]
        out[f"nb_{c}"] = nbs[c]
        out[f"end_{c}"] = ends[c]
    absent = np.zeros(n, bool)
    for c in CLASSES:
        absent |= out[f"area_{c}"].to_numpy() <= 0
    out["missing_mid"] = ((out["position"].to_numpy() == "mid") & absent).astype(np.int8)
    return out


def _jumps(a: np.ndarray) -> np.ndarray:
    """Relative jump of each area against the mean of its neighbours (volume order)."""
    if len(a) < 2:
        return np.zeros(len(a))
    left = np.r_[np.nan, a[:-1]]
    right = np.r_[a[1:], np.nan]
    m = np.nanmean(np.stack([left, right]), axis=0)
    return np.abs(a - m) / np.maximum(np.maximum(a, m), JUMP_FLOOR_MM2)


def patient_volumes(table: pd.DataFrame, key: Sequence[str] = ("patient", "model")) -> pd.DataFrame:
    """Per patient (``key``): ED/ES volumes (mL) of each class and the ED > ES checks.

    Args:
        table: slice table with the ``key`` columns, ``phase``, ``thickness`` (mm) and
            ``area_<c>`` (mm²).
        key: columns that identify a patient.

    Returns:
        The ``key`` columns, ``<c>_<phase>_ml`` for each class and phase, ``ed_gt_es_lv``,
        ``ed_gt_es_rv`` (1.0/0.0, NaN when a phase is missing).
    """
    t = table.assign(**{f"_v_{c}": table[f"area_{c}"] * table["thickness"] / 1000.0 for c in CLASSES})
    vol = t.groupby([*key, "phase"], sort=True)[[f"_v_{c}" for c in CLASSES]].sum()
    wide = vol.unstack("phase")
    out = pd.DataFrame(index=wide.index)
    for c in CLASSES:
        for phase in ("ED", "ES"):
            key = (f"_v_{c}", phase)
            out[f"{c}_{phase.lower()}_ml"] = wide[key] if key in wide.columns else np.nan
    for c in ("lv", "rv"):
        ed, es = out[f"{c}_ed_ml"], out[f"{c}_es_ml"]
        out[f"ed_gt_es_{c}"] = np.where(ed.isna() | es.isna(), np.nan, (ed > es).astype(float))
    return out.reset_index()
