"""Before/after comparison of two evaluations of the same rows (e.g. refine vs its gen-seg input).

What a correction must show (issue targets): how many slices it made better or worse by more
than ``worse_threshold`` (mean Dice and per class), the HD95 per class before and after on the
same slices, and whether the clinical indices moved towards or away from the ground truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from acdctool.conventions import CLASSES, ROW_KEY
from acdctool.metrics.overlap import Convention

CLINICAL = ("lv_ef", "rv_ef", "lv_edv", "lv_esv", "rv_edv", "rv_esv", "myo_mass")
"""Clinical indices whose error against ground truth the comparison reports (%, mL, g)."""


def compare(
    before: pd.DataFrame,
    after: pd.DataFrame,
    threshold: float,
    top_k: int,
    worse_threshold: float = 0.05,
    families: pd.Series | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-row deltas and the counts the report asks for.

    Args:
        before, after: per-slice tables from :func:`acdctool.report.tables.slice_metrics`,
            same rows in the same order.
        threshold: |Δ mean Dice| at or below which a row counts as unchanged.
        top_k: rows listed each way.
        worse_threshold: a row is ``better`` (``worse``) when a Dice rose (fell) by more than
            this, counted for the mean Dice and for each class.
        families: per row of ``after``, the refine candidate family that produced it (the
            ``refine_family`` column; "" where refine kept the input): adds ``by_family``.

    Returns:
        (deltas, summary): ``deltas`` has the key, ``dice_<c>_before``/``_after``/``_delta``
        (and mean), ``hd95_<c>_before``/``_after`` (mm), ``valid_before``/``_after``,
        ``outcome`` in improved / unchanged / deteriorated, ``change`` in better / worse /
        none (at ``worse_threshold``, mean Dice) and ``refine_family`` when given;
        ``summary`` holds the counts, per-class means, ``better_worse`` (per class too),
        ``hd95_mm`` (per class: mean before and after over the slices where both measure a
        contour, i.e. the structure is in the mask and the ground truth both times, and how
        many), invalid counts, ``by_family`` and the top rows.

    Example:
        >>> t = lambda d: pd.DataFrame({"patient": ["p"] * 2, "phase": "ED", "slice": [0, 1], "model": "m",
        ...     "group": "NOR", "position": "mid", "valid": True, **{f"dice_{c}": d for c in ("rv", "myo", "lv")},
        ...     "dice_mean": d, **{f"hd95_{c}": [1.0, np.nan] for c in ("rv", "myo", "lv")}})
        >>> _, s = compare(t([0.5, 0.9]), t([0.7, 0.8]), 0.01, 1)
        >>> s["better_worse"]["better"], s["better_worse"]["worse"], s["hd95_mm"]["lv"]["n"]
        (1, 1, 1)
    """
    out = after[[*ROW_KEY, "group", "position"]].copy()
    for name in [*CLASSES, "mean"]:
        b, a = before[f"dice_{name}"].to_numpy(), after[f"dice_{name}"].to_numpy()
        out[f"dice_{name}_before"], out[f"dice_{name}_after"], out[f"dice_{name}_delta"] = b, a, a - b
    for name in CLASSES:
        out[f"hd95_{name}_before"] = before[f"hd95_{name}"].to_numpy(np.float64)
        out[f"hd95_{name}_after"] = after[f"hd95_{name}"].to_numpy(np.float64)
    out["valid_before"], out["valid_after"] = before["valid"].to_numpy(), after["valid"].to_numpy()
    delta = out["dice_mean_delta"].to_numpy()
    out["outcome"] = np.where(delta > threshold, "improved", np.where(delta < -threshold, "deteriorated", "unchanged"))
    out["change"] = np.where(delta > worse_threshold, "better", np.where(delta < -worse_threshold, "worse", "none"))
    if families is not None:
        out["refine_family"] = np.asarray(families, dtype=object)
    counts = out["outcome"].value_counts()
    invalid_before, invalid_after = int((~out.valid_before).sum()), int((~out.valid_after).sum())
    summary: dict[str, Any] = {
        "rows": len(out),
        "threshold": threshold,
        "improved": int(counts.get("improved", 0)),
        "unchanged": int(counts.get("unchanged", 0)),
        "deteriorated": int(counts.get("deteriorated", 0)),
        "improved_by_more_than_0.3": int((delta > 0.3).sum()),
        "worst_delta": float(delta.min()) if len(delta) else None,
        "dice_before": {n: float(out[f"dice_{n}_before"].mean()) for n in [*CLASSES, "mean"]},
        "dice_after": {n: float(out[f"dice_{n}_after"].mean()) for n in [*CLASSES, "mean"]},
        "better_worse": _better_worse(out, worse_threshold),
        "hd95_mm": {n: _both_defined(before, after, n) for n in CLASSES},
        "invalid_before": invalid_before,
        "invalid_after": invalid_after,
        "invalid_change": invalid_after - invalid_before,
        "invalid_reduction": (invalid_before - invalid_after) / invalid_before if invalid_before else None,
    }
    if families is not None:
        summary["by_family"] = {
            (str(fam) or "(kept)"): _family_stats(part, threshold, worse_threshold)
            for fam, part in out.groupby("refine_family", sort=True)
        }
    summary["top_improved"] = _top(out, top_k, ascending=False)
    summary["top_deteriorated"] = _top(out, top_k, ascending=True)
    return out, summary


def clinical_change(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Mean absolute error against ground truth of each clinical index, before and after.

    Args:
        before, after: :func:`acdctool.report.tables.clinical_table` of the baseline's and the
            evaluated masks (rows matched by patient and model).

    Returns:
        Per index of :data:`CLINICAL`: ``before``, ``after`` (mean |pred − gt| over the patients
        where both are finite, in the index's unit: % for EF, mL for volumes, g for mass),
        ``change`` (after − before; negative: closer to the ground truth) and ``n``.

    Example:
        >>> row = lambda ef, gt: {"patient": "p", "model": "m", "lv_ef_pred": ef, "lv_ef_gt": gt}
        >>> c = clinical_change(pd.DataFrame([row(50.0, 60.0)]), pd.DataFrame([row(57.0, 60.0)]))
        >>> c["lv_ef"]
        {'before': 10.0, 'after': 3.0, 'change': -7.0, 'n': 1}
    """
    out: dict[str, dict[str, Any]] = {}
    if not len(before) or not len(after):
        return {name: {"before": None, "after": None, "change": None, "n": 0} for name in CLINICAL}
    both = after.merge(before, on=["patient", "model"], suffixes=("", "_baseline"))
    for name in CLINICAL:
        if f"{name}_pred" not in both:
            continue
        err_after = (both[f"{name}_pred"] - both[f"{name}_gt"]).abs().to_numpy(np.float64)
        err_before = (both[f"{name}_pred_baseline"] - both[f"{name}_gt_baseline"]).abs().to_numpy(np.float64)
        ok = np.isfinite(err_after) & np.isfinite(err_before)
        b = float(err_before[ok].mean()) if ok.any() else None
        a = float(err_after[ok].mean()) if ok.any() else None
        out[name] = {"before": b, "after": a, "change": None if a is None or b is None else a - b, "n": int(ok.sum())}
    return out


def _better_worse(out: pd.DataFrame, t: float) -> dict[str, Any]:
    res: dict[str, Any] = {"threshold": t}
    res.update(_count(out["dice_mean_delta"], t))
    res["rows"] = len(out)
    res["per_class"] = {n: _count(out[f"dice_{n}_delta"], t) for n in CLASSES}
    return res


def _count(delta: pd.Series, t: float) -> dict[str, int]:
    d = delta.to_numpy(np.float64)
    return {"better": int((d > t).sum()), "worse": int((d < -t).sum())}


def _both_defined(before: pd.DataFrame, after: pd.DataFrame, name: str) -> dict[str, Any]:
    """HD95 means over the slices where it measures a contour before and after: the structure is
    in the mask and the ground truth both times (as the terminal table; both absent is HD 0 by
    convention, which says nothing about a contour)."""
    b, a = before[f"hd95_{name}"].to_numpy(np.float64), after[f"hd95_{name}"].to_numpy(np.float64)
    ok = np.isfinite(b) & np.isfinite(a)
    for table in (before, after):
        conv = table.get(f"dice_{name}_conv")
        if conv is not None:
            ok &= conv.to_numpy() == Convention.NORMAL.value
    if not ok.any():
        return {"before": None, "after": None, "n": 0}
    return {"before": float(b[ok].mean()), "after": float(a[ok].mean()), "n": int(ok.sum())}


def _family_stats(part: pd.DataFrame, threshold: float, worse_threshold: float) -> dict[str, Any]:
    delta = part["dice_mean_delta"]
    return {
        "rows": len(part),
        "improved": int((delta > threshold).sum()),
        "deteriorated": int((delta < -threshold).sum()),
        **_count(delta, worse_threshold),
        "dice_mean_delta": float(delta.mean()),
        "invalid_after": int((~part["valid_after"].astype(bool)).sum()),
    }


def _top(deltas: pd.DataFrame, k: int, ascending: bool) -> list[dict[str, Any]]:
    order = deltas.sort_values("dice_mean_delta", ascending=ascending, kind="stable").head(k)
    sign = order.dice_mean_delta < 0 if ascending else order.dice_mean_delta > 0
    rows = order[sign]
    return [
        {
            "row": int(i),
            **{c: (r[c].item() if hasattr(r[c], "item") else r[c]) for c in ROW_KEY},
            "before": float(r["dice_mean_before"]),
            "after": float(r["dice_mean_after"]),
            "delta": float(r["dice_mean_delta"]),
        }
        for i, r in zip(rows.index.tolist(), rows.to_dict("records"), strict=True)
    ]
