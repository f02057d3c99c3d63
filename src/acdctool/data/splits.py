"""Patient-level, group-stratified splits and folds.

Splitting by *patient* (never by slice) keeps every slice of a patient on one side, so no net
is evaluated on a patient it trained on (the reference report split by slice and leaked).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def assign_splits(
    patients: Sequence[tuple[str, str, str]], val_fraction: float, folds: int, seed: int
) -> dict[str, tuple[str, int]]:
    """Give each patient a split (``train``/``val``/``test``) and a fold id.

    ``training`` patients are shuffled per group with a seeded generator; within each group
    fold ids cycle 0..folds-1 (so each fold holds every group in equal share) and the first
    ``round(val_fraction · group size)`` patients go to ``val``, starting at a group-dependent
    offset so val patients spread over the folds. ``testing`` patients get ``("test", -1)``.

    Args:
        patients: (name, group, source) with source ``training`` or ``testing``.
        val_fraction: share of each group put in ``val``, in [0, 1).
        folds: number of folds k ≥ 1 (fold ids 0..k-1).
        seed: seed of the shuffles; same inputs and seed → same assignment.

    Returns:
        name -> (split, fold).

    Example:
        >>> assign_splits([("patient001", "NOR", "training")], 0.0, 1, 0)
        {'patient001': ('train', 0)}
    """
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[str]] = defaultdict(list)
    out: dict[str, tuple[str, int]] = {}
    for name, group, source in sorted(patients):
        if source == "testing":
            out[name] = ("test", -1)
        else:
            by_group[group].append(name)
    offset = 0
    for group in sorted(by_group):
        names = list(by_group[group])
        rng.shuffle(names)
        n_val = int(round(val_fraction * len(names)))
        # Rotate which fold positions start the list so val patients do not pile up in fold 0.
        fold_of = {name: (offset + i) % folds for i, name in enumerate(names)}
        for i, name in enumerate(names):
            out[name] = ("val" if i < n_val else "train", fold_of[name])
        offset += n_val
    return out
