"""Which NVAE refines which patient: never one that trained on it (the way gen-seg assigns fold models).

An NVAE's training patients are read from its checkpoint
(:class:`acdctool.correct.patients.ModelPatients`: stored by train-nvae, derived from the folds
for older checkpoints, else unknown, and the NVAE is treated as having seen everyone).

Per patient of fold f (:func:`assign`):

1. the NVAE of fold f when given and it never saw the patient (it validated on that fold);
2. else the first NVAE that never saw it, fold NVAEs by fold number, then a train/val-split
   NVAE: test patients (fold −1), which no fold NVAE saw, go to the lowest fold's
   (:data:`TEST_POLICY`);
3. else, only with ``allow_seen``, the NVAE of fold f or the first one, recorded as seen;
   without it the stage refuses, naming the patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from acdctool.correct.patients import UNSEEN, ModelPatients
from acdctool.errors import BadInputError

TEST_POLICY = "lowest-fold"
"""Fold −1 patients (seen by no fold NVAE): the unseen NVAE of the lowest fold."""


@dataclass
class Assignment:
    """Per input row: the index of its NVAE (into the list given) and whether it saw the patient."""

    model: np.ndarray
    """(N,) int64."""
    seen: np.ndarray
    """(N,) int8: :data:`~acdctool.correct.patients.SEEN`, ``UNSEEN`` or ``UNKNOWN``."""


def name_some(names: Sequence[str], most: int = 5) -> str:
    """``a, b, c, d, e and 3 more``.

    >>> name_some(["p1", "p2"]), name_some([f"p{i}" for i in range(8)], 3)
    ('p1, p2', 'p0, p1, p2 and 5 more')
    """
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def assign(
    patients: np.ndarray, folds: np.ndarray, models: Sequence[ModelPatients], allow_seen: bool = False
) -> Assignment:
    """Give every row the NVAE that never saw its patient (rules in the module docstring).

    Args:
        patients: (N,) patient id per row.
        folds: (N,) fold id per row (−1 for test patients).
        models: the NVAEs, in the order given (each fold at most once).
        allow_seen: use an NVAE that saw (or may have seen) the patient instead of refusing.

    Raises:
        BadInputError: two NVAEs for one fold; without ``allow_seen``, patients that every NVAE
            saw or may have seen (at most 5 named).

    Example:
        >>> from pathlib import Path
        >>> a = ModelPatients(Path("a.pt"), 0, frozenset({"p2"}), "stored")
        >>> b = ModelPatients(Path("b.pt"), 1, frozenset({"p1"}), "stored")
        >>> assign(np.array(["p1", "p2", "p9"]), np.array([0, 1, -1]), [a, b]).model.tolist()
        [0, 1, 0]
    """
    by_fold: dict[int | None, int] = {}
    for i, m in enumerate(models):
        if m.fold in by_fold:
            what = f"fold {m.fold}" if m.fold is not None else "the train/val split"
            raise BadInputError(f"{m.path} and {models[by_fold[m.fold]].path}: two NVAEs for {what}; give one per fold")
        by_fold[m.fold] = i
    order = sorted(range(len(models)), key=lambda i: (models[i].fold is None, models[i].fold or 0))
    choice: dict[tuple[str, int], tuple[int, int]] = {}
    refused: dict[str, None] = {}
    for patient, fold in dict.fromkeys(zip(map(str, patients), map(int, folds), strict=True)):
        own = by_fold.get(fold)
        if own is not None and models[own].seen(patient) == UNSEEN:
            choice[patient, fold] = (own, UNSEEN)
            continue
        free = [i for i in order if models[i].seen(patient) == UNSEEN]
        if free:
            choice[patient, fold] = (free[0], UNSEEN)
        elif allow_seen:
            pick = own if own is not None else order[0]
            choice[patient, fold] = (pick, models[pick].seen(patient))
        else:
            refused[patient] = None
    if refused:
        raise BadInputError(_refusal(list(refused), models))
    rows = [choice[p, f] for p, f in zip(map(str, patients), map(int, folds), strict=True)]
    return Assignment(
        np.array([r[0] for r in rows], dtype=np.int64).reshape(-1), np.array([r[1] for r in rows], np.int8).reshape(-1)
    )


def _refusal(patients: list[str], models: Sequence[ModelPatients]) -> str:
    paths = ", ".join(str(m.path) for m in models)
    unknown = [m for m in models if m.trained is None]
    if unknown and len(unknown) == len(models):
        return (
            f"{paths}: the checkpoint stores no training patients (trained before they were recorded) and no "
            f"--fold to derive them from, so it may have trained on {name_some(patients)} ({len(patients)} "
            f"patients to refine); retrain it (train-nvae --fold k), or pass --allow-seen to refine anyway "
            f"(recorded in the output)"
        )
    verb = "trained (or, storing no training patients, may have trained) on" if unknown else "trained on"
    return (
        f"every NVAE given ({paths}) {verb} {name_some(patients)}, which it would refine "
        f"({len(patients)} patients); give the NVAE of each patient's fold (train-nvae --fold k), or pass "
        f"--allow-seen to refine anyway (recorded in the output)"
    )
