from __future__ import annotations

from collections import Counter

from acdctool.conventions import GROUPS
from acdctool.data.splits import assign_splits


def _patients(per_group=20):
    return [(f"patient{i * 5 + g + 1:03d}", grp, "training") for i in range(per_group) for g, grp in enumerate(GROUPS)]


def test_stratified_val_and_folds():
    out = assign_splits(_patients(), val_fraction=0.2, folds=5, seed=0)
    groups = {name: grp for name, grp, _ in _patients()}
    val = [n for n, (s, _) in out.items() if s == "val"]
    assert Counter(groups[n] for n in val) == {g: 4 for g in GROUPS}
    for k in range(5):
        members = [n for n, (_, f) in out.items() if f == k]
        assert Counter(groups[n] for n in members) == {g: 4 for g in GROUPS}
    # val patients spread over folds rather than filling one
    assert max(Counter(out[n][1] for n in val).values()) <= 5


def test_seeded_and_test_patients():
    pts = _patients(4) + [("patient101", "NOR", "testing")]
    a, b = assign_splits(pts, 0.25, 2, seed=1), assign_splits(pts, 0.25, 2, seed=1)
    assert a == b and a["patient101"] == ("test", -1)
    assert a != assign_splits(pts, 0.25, 2, seed=2)


def test_small_groups_do_not_tie_val_to_one_fold():
    """2 patients per group, half in val: val must not be exactly one fold (the old bug)."""
    pts = _patients(2)
    out = assign_splits(pts, val_fraction=0.5, folds=2, seed=0)
    val_folds = [f for s, f in out.values() if s == "val"]
    train_folds = [f for s, f in out.values() if s == "train"]
    assert len(val_folds) == 5 and set(val_folds) == {0, 1} and set(train_folds) == {0, 1}
