"""Before/after comparison of two evaluations of the same rows (e.g. refine vs its gen-seg input)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from acdctool.conventions import CLASSES, ROW_KEY


def compare(
    before: pd.DataFrame, after: pd.DataFrame, threshold: float, top_k: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-row deltas and the counts the report asks for.

    Args:
        before, after: per-slice tables from :func:`acdctool.report.tables.slice_metrics`,
            same rows in the same order.
        threshold: |Δ mean Dice| at or below which a row counts as unchanged.
        top_k: rows listed each way.

    Returns:
        (deltas, summary): ``deltas`` has the key, ``dice_mean_before``/``_after``/``delta``
        (and per class), ``valid_before``/``_after``, ``outcome`` in improved / unchanged /
        deteriorated; ``summary`` holds counts, per-class means, invalid counts, top rows.
    """
    out = after[[*ROW_KEY, "group", "position"]].copy()
    for name in [*CLASSES, "mean"]:
        b, a = before[f"dice_{name}"].to_numpy(), after[f"dice_{name}"].to_numpy()
        out[f"dice_{name}_before"], out[f"dice_{name}_after"], out[f"dice_{name}_delta"] = b, a, a - b
    out["valid_before"], out["valid_after"] = before["valid"].to_numpy(), after["valid"].to_numpy()
    delta = out["dice_mean_delta"].to_numpy()
    out["outcome"] = np.where(delta > threshold, "improved", np.where(delta < -threshold, "deteriorated", "unchanged"))
    counts = out["outcome"].value_counts()
    invalid_before, invalid_after = int((~out.valid_before).sum()), int((~out.valid_after).sum())
    summary = {
        "rows": len(out),
        "threshold": threshold,
        "improved": int(counts.get("improved", 0)),
        "unchanged": int(counts.get("unchanged", 0)),
        "deteriorated": int(counts.get("deteriorated", 0)),
        "improved_by_more_than_0.3": int((delta > 0.3).sum()),
        "worst_delta": float(delta.min()) if len(delta) else None,
        "dice_before": {n: float(out[f"dice_{n}_before"].mean()) for n in [*CLASSES, "mean"]},
        "dice_after": {n: float(out[f"dice_{n}_after"].mean()) for n in [*CLASSES, "mean"]},
        "invalid_before": invalid_before,
        "invalid_after": invalid_after,
        "invalid_change": invalid_after - invalid_before,
        "invalid_reduction": (invalid_before - invalid_after) / invalid_before if invalid_before else None,
        "top_improved": _top(out, top_k, ascending=False),
        "top_deteriorated": _top(out, top_k, ascending=True),
    }
    return out, summary


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
