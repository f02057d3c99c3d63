"""Which patients an NVAE trained on, as far as its checkpoint tells (the leakage check's input).

train-nvae stores them in the checkpoint's ``data.train_patients``. Older checkpoints lack
them: with ``data.fold`` k and ``data.folds`` every patient of another fold counts as seen (a
superset: train-nvae used the other folds' ``train`` split); without a fold they are unknown.
``refine`` gives every patient an NVAE that never saw it (:mod:`acdctool.stages.refine.assign`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEEN, UNSEEN, UNKNOWN = 1, 0, -1
"""``refine_nvae_seen`` values: trained on the patient, never did, cannot tell (old checkpoint)."""


@dataclass(frozen=True)
class ModelPatients:
    """An NVAE's fold and training patients, as far as its checkpoint tells."""

    path: Path
    fold: int | None
    trained: frozenset[str] | None
    """None: unknown (no patient list, no fold to derive one from)."""
    source: str
    """``stored``, ``derived`` (every patient of the other folds) or ``unknown``."""

    @property
    def label(self) -> str:
        """Short name for the ``refine_model`` column: ``f0``, ``f1``, ... or ``split``."""
        return "split" if self.fold is None else f"f{self.fold}"

    @classmethod
    def from_data(cls, path: Path | str, data: Mapping[str, Any]) -> ModelPatients:
        """Read a checkpoint's ``data`` record.

        Example:
            >>> m = ModelPatients.from_data("n.pt", {"fold": 0, "folds": {"p1": 0, "p2": 1, "p3": -1}})
            >>> sorted(m.trained), m.source, m.label
            (['p2'], 'derived', 'f0')
        """
        fold = data.get("fold")
        fold = None if fold is None else int(fold)
        if "train_patients" in data:
            return cls(Path(path), fold, frozenset(map(str, data["train_patients"])), "stored")
        folds = data.get("folds")
        if fold is not None and isinstance(folds, Mapping) and folds:
            others = frozenset(str(p) for p, f in folds.items() if int(f) >= 0 and int(f) != fold)
            return cls(Path(path), fold, others, "derived")
        return cls(Path(path), fold, None, "unknown")

    def seen(self, patient: str) -> int:
        """:data:`SEEN`, :data:`UNSEEN` or :data:`UNKNOWN` for one patient id."""
        if self.trained is None:
            return UNKNOWN
        return SEEN if patient in self.trained else UNSEEN
