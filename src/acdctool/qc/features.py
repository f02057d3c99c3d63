"""The QC model's inputs, made from the signals, and each signal's direction for scoring alone.

Each class (RV, MYO, LV) has its own model (:mod:`.model`), whose inputs are the
:data:`COMMON` features of the slice and the class's own (:data:`PER_CLASS`: its area, size,
continuity, neighbours, soft Dice, entropy, probability mass, NVAE Dice). Features come in
groups by what they need: ``mask`` (the mask alone: always there), ``probs``
(a ``probs`` array, from ``gen-seg --save-probs``) and ``nvae`` (``--nvae``). Each feature is a
transformed signal (:data:`FEATURES`): logs where a signal spans decades (entropy, NLL, areas),
one-hots for the slice position, Dice-like agreements as they are. A calibration stores the
names it was fitted on; ``qc`` rebuilds exactly those by name.

:data:`SIGNALS` lists the signals scored alone beside the combination (``eval --qc``, the
calibration's out-of-fold report), each with its direction: ``+1`` when a higher value means
a worse mask (entropy), ``-1`` when it means a better one (Dice with the NVAE).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from acdctool.config import QcFeatures
from acdctool.conventions import CLASSES
from acdctool.errors import BadInputError

__all__ = [
    "FeatureGroup",
    "Feature",
    "COMMON",
    "PER_CLASS",
    "FEATURES",
    "SIGNALS",
    "feature_names",
    "feature_matrix",
    "available_groups",
    "groups_of",
]


FeatureGroup = QcFeatures
"""What a feature needs besides the mask: the groups ``qc-calibrate --features`` chooses from."""


@dataclass(frozen=True)
class Feature:
    """One model input: its name, the group it needs and how it is computed from the slice table."""

    name: str
    group: FeatureGroup
    compute: Callable[[pd.DataFrame], np.ndarray]


def _col(name: str) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda t: t[name].to_numpy(np.float64)


def _log(name: str, eps: float) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda t: np.log(t[name].to_numpy(np.float64) + eps)


def _log_area(cols: Sequence[str]) -> Callable[[pd.DataFrame], np.ndarray]:
    # cm² + 1, so an empty class is 0 and a 10 cm² LV about 2.4
    return lambda t: np.log1p(sum(t[c].to_numpy(np.float64) for c in cols) / 100.0)


def _is(column: str, value: str) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda t: (t[column].to_numpy() == value).astype(np.float64)


def _entropy_x_size(t: pd.DataFrame) -> np.ndarray:
    # the same uncertainty matters more on a small structure (fewer pixels to be right on)
    area = sum(t[f"area_{c}"].to_numpy(np.float64) for c in CLASSES)
    return np.log(t["entropy_band"].to_numpy(np.float64) + 1e-3) - np.log1p(area / 100.0)


def _small(c: str) -> Callable[[pd.DataFrame], np.ndarray]:
    # near 1 for a structure of a few mm², 0 beyond a few cm²: where "is it there at all?" is open
    return lambda t: np.exp(-t[f"area_{c}"].to_numpy(np.float64) / 100.0)


def _mass_ratio(c: str) -> Callable[[pd.DataFrame], np.ndarray]:
    # probability mass against the mask's area (mm², +10 so that empty stays finite)
    return lambda t: np.log((t[f"mass_{c}"].to_numpy(np.float64) + 10.0) / (t[f"area_{c}"].to_numpy(np.float64) + 10.0))


def _slice_at(end: str) -> Callable[[pd.DataFrame], np.ndarray]:
    def f(t: pd.DataFrame) -> np.ndarray:
        s, n = t["slice"].to_numpy(), t["n_slices"].to_numpy()
        return (s == 0).astype(np.float64) if end == "first" else (s == n - 1).astype(np.float64)

    return f


_M, _P, _N = FeatureGroup.MASK, FeatureGroup.PROBS, FeatureGroup.NVAE
_AREAS = [f"area_{c}" for c in CLASSES]
COMMON: tuple[Feature, ...] = (
    Feature("invalid", _M, lambda t: 1.0 - t["valid"].to_numpy(np.float64)),
    Feature("log_n_failed", _M, lambda t: np.log1p(t["n_failed"].to_numpy(np.float64))),
    Feature("empty", _M, _col("empty")),
    Feature("log_area_fg", _M, _log_area(_AREAS)),
    Feature("jump_max", _M, _col("jump_max")),
    Feature("missing_mid", _M, _col("missing_mid")),
    Feature("pos_base", _M, _is("position", "base")),
    Feature("pos_apex", _M, _is("position", "apex")),
    Feature("first_slice", _M, _slice_at("first")),
    Feature("last_slice", _M, _slice_at("last")),
    Feature("z", _M, _col("z")),
    Feature("z_off_centre", _M, lambda t: (t["z"].to_numpy(np.float64) - 0.5) ** 2),
    Feature("log_entropy_fg", _P, _log("entropy_fg", 1e-3)),
    Feature("log_entropy_band", _P, _log("entropy_band", 1e-3)),
    Feature("margin_fg", _P, _col("margin_fg")),
    Feature("log_uncertain_frac", _P, _log("uncertain_frac", 1e-3)),
    Feature("entropy_x_size", _P, _entropy_x_size),
    Feature("prob_dice_mean", _P, _col("prob_dice_mean")),
    Feature("prob_dice_min", _P, _col("prob_dice_min")),
    Feature("nvae_dice_mean", _N, _col("nvae_dice_mean")),
    Feature("nvae_dice_min", _N, _col("nvae_dice_min")),
    Feature("log_nvae_nll", _N, _log("nvae_nll", 1e-3)),
)
"""Features of the whole slice, used by every class's model."""


def _per_class(c: str) -> tuple[Feature, ...]:
    return (
        Feature(f"log_area_{c}", _M, _log_area([f"area_{c}"])),
        Feature(f"small_{c}", _M, _small(c)),
        Feature(f"rel_area_{c}", _M, _col(f"rel_area_{c}")),
        Feature(f"jump_{c}", _M, _col(f"jump_{c}")),
        Feature(f"nb_{c}", _M, _col(f"nb_{c}")),
        Feature(f"end_{c}", _M, _col(f"end_{c}")),
        Feature(f"prob_dice_{c}", _P, _col(f"prob_dice_{c}")),
        Feature(f"log_entropy_{c}", _P, _log(f"entropy_{c}", 1e-3)),
        Feature(f"log_mass_ratio_{c}", _P, _mass_ratio(c)),
        Feature(f"nvae_dice_{c}", _N, _col(f"nvae_dice_{c}")),
    )


PER_CLASS: dict[str, tuple[Feature, ...]] = {c: _per_class(c) for c in CLASSES}
"""Features of one class (``rv``, ``myo``, ``lv``) in a slice."""
FEATURES: tuple[Feature, ...] = COMMON + tuple(f for c in CLASSES for f in PER_CLASS[c])
"""Every feature: the common ones, then each class's."""
_BY_NAME = {f.name: f for f in FEATURES}

SIGNALS: dict[str, int] = {
    "entropy_fg": +1,
    "entropy_band": +1,
    "margin_fg": -1,
    "uncertain_frac": +1,
    "prob_dice_mean": -1,
    "nvae_dice_mean": -1,
    "nvae_dice_min": -1,
    "nvae_nll": +1,
    "n_failed": +1,
    "jump_max": +1,
    "risk": +1,
}
"""Signals scored alone (column → +1 when higher is worse, −1 when higher is better)."""


def feature_names(groups: Iterable[FeatureGroup | str], cls: str | None = None) -> list[str]:
    """Names of the features of ``groups``: all of them, or those a class's model uses
    (``cls``: the common features, then that class's own).

    >>> feature_names(["mask"])[:3]
    ['invalid', 'log_n_failed', 'empty']
    >>> feature_names(["nvae"], cls="lv")
    ['nvae_dice_mean', 'nvae_dice_min', 'log_nvae_nll', 'nvae_dice_lv']
    """
    wanted = {FeatureGroup(g) for g in groups}
    pool = FEATURES if cls is None else COMMON + PER_CLASS[cls]
    return [f.name for f in pool if f.group in wanted]


def groups_of(names: Iterable[str]) -> list[str]:
    """The groups the named features need (sorted), e.g. ``['mask', 'nvae']``.

    Raises:
        BadInputError: an unknown feature name (a calibration made by another version).
    """
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise BadInputError(f"unknown QC feature(s) {', '.join(unknown)} (made by another acdctool version?)")
    return sorted({_BY_NAME[n].group.value for n in names})


def available_groups(table: pd.DataFrame) -> list[str]:
    """Feature groups whose signals the slice table holds."""
    out = [FeatureGroup.MASK.value]
    if "entropy_fg" in table.columns:
        out.append(FeatureGroup.PROBS.value)
    if "nvae_dice_mean" in table.columns:
        out.append(FeatureGroup.NVAE.value)
    return out


def feature_matrix(table: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """The ``(N, len(names))`` float64 matrix of the named features.

    Raises:
        BadInputError: a feature needs signals the table lacks (naming what provides them),
            or an unknown name.
    """
    need = groups_of(names)
    missing = [g for g in need if g not in available_groups(table)]
    if missing:
        how = {"probs": "a 'probs' array (gen-seg --save-probs)", "nvae": "--nvae CKPT"}
        raise BadInputError(
            "the calibration uses features that need " + " and ".join(how[g] for g in missing) + "; this run has none"
        )
    if not names:
        return np.empty((len(table), 0))
    return np.stack([_BY_NAME[n].compute(table) for n in names], axis=1).astype(np.float64)
