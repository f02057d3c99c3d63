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

    ``training`` patients are shuffled per group with a seeded generator. Fold ids cycle
    0..folds-1 along the groups laid end to end, so every fold holds each group in (nearly)
    equal share and folds differ in size by at most one. ``round(val_fraction · n)`` patients go
    to ``val``, taken round-robin over the groups (the first of each group, then the second...),
    so ``val`` is stratified too and spreads over the folds. ``testing`` patients get
    ``("test", -1)``.

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
    shuffled = {g: list(rng.permutation(by_group[g])) for g in sorted(by_group)}
    group_major = [name for g in sorted(shuffled) for name in shuffled[g]]
    fold_of = {name: i % folds for i, name in enumerate(group_major)}
    # How many val patients each group gives: the first n_val of a round-robin over groups.
    longest = max((len(v) for v in shuffled.values()), default=0)
    interleaved = [g for i in range(longest) for g, v in shuffled.items() if i < len(v)]
    n_val = int(round(val_fraction * len(interleaved)))
    quota = {g: interleaved[:n_val].count(g) for g in shuffled}
    # Within a group, take val patients from successive folds (continuing across groups), so
    # val never piles up in one fold, however small the groups.
    val: set[str] = set()
    next_fold = 0
    for g, names in shuffled.items():
        pool = list(names)
        for _ in range(quota[g]):
            pick = next((n for n in pool if fold_of[n] == next_fold % folds), pool[0])
            pool.remove(pick)
            val.add(pick)
            next_fold += 1
    for name in group_major:
        out[str(name)] = ("val" if name in val else "train", fold_of[name])
    return out
