"""One frozen dataclass per stage: the single home of every default.

CLI options map one-to-one onto these fields; the resolved config is stored (as JSON) in every
output file and checkpoint, so a result can always be traced back to the settings that made it.
Later stages add their own dataclass here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from acdctool.errors import ConfigError

GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
"""ACDC pathology groups, in the order the phantoms cycle through them."""


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic ACDC-format phantoms (``acdctool synth``).

    Patients cycle through ``GROUPS`` so any multiple of 5 is balanced. Everything random is
    drawn from one generator seeded with ``seed`` (per patient), so output is deterministic.
    """

    patients: int = 10
    """Patients written under ``training/``."""
    test_patients: int = 0
    """Patients written under ``testing/`` (split ``test`` after prep)."""
    seed: int = 0
    frames: int = 12
    """Cine frames per cycle (``NbFrame``); ED is frame 1, ES is drawn near 40% of the cycle."""
    write_4d: bool = False
    """Also write ``patientNNN_4d.nii.gz`` (all frames) for every patient."""
    first_id: int = 1
    """Number of the first patient (``patient001`` by default)."""

    def __post_init__(self) -> None:
        if self.patients < 0 or self.test_patients < 0:
            raise ConfigError("patient counts must be >= 0")
        if self.patients + self.test_patients == 0:
            raise ConfigError("nothing to write: --patients and --test-patients are both 0")
        if self.frames < 4:
            raise ConfigError(f"--frames must be >= 4, got {self.frames}")
        if self.first_id < 1 or self.first_id + self.patients + self.test_patients > 1000:
            raise ConfigError("patient numbers must stay within 1..999")


@dataclass(frozen=True)
class PrepConfig:
    """ACDC folder to HDF5 slice dataset (``acdctool prep``)."""

    size: int = 128
    """Output in-plane size (px); the crop is square, so proportions are kept."""
    roi: str = "gt"
    """``gt``: square box around the ground-truth heart plus a margin; ``center``: a fixed
    physical square (``roi_mm``) around the image centre (no ground truth needed)."""
    margin: float = 0.25
    """``roi=gt``: margin added on each side, as a fraction of the heart's larger extent."""
    roi_mm: float = 200.0
    """``roi=center``: side of the square crop in mm."""
    mask_interp: str = "smooth"
    """``smooth``: resize each label's one-hot channel linearly and take the argmax (keeps
    anatomy valid, SPEC §3); ``nearest``: nearest-neighbour on the label map."""
    low_percentile: float = 1.0
    high_percentile: float = 99.0
    val_fraction: float = 0.2
    """Fraction of each group of ``training/`` patients put in the ``val`` split."""
    folds: int = 5
    """Fold ids 0..folds-1 for ``training/`` patients, stratified by group."""
    seed: int = 0
    skip_bad: bool = False
    """Continue past broken patients and list them at the end instead of failing."""
    workers: int = 2
    """Patients processed concurrently (threads); output is identical for any value."""

    def __post_init__(self) -> None:
        if self.size < 16 or self.size > 1024:
            raise ConfigError(f"--size must be within 16..1024, got {self.size}")
        if self.roi not in ("gt", "center"):
            raise ConfigError(f"--roi must be 'gt' or 'center', got {self.roi!r}")
        if self.mask_interp not in ("smooth", "nearest"):
            raise ConfigError(f"--mask-interp must be 'smooth' or 'nearest', got {self.mask_interp!r}")
        if not 0 <= self.margin <= 2:
            raise ConfigError(f"--margin must be within 0..2, got {self.margin}")
        if self.roi_mm <= 0:
            raise ConfigError(f"--roi-mm must be > 0, got {self.roi_mm}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ConfigError("percentiles must satisfy 0 <= low < high <= 100")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be within [0, 1), got {self.val_fraction}")
        if self.folds < 1:
            raise ConfigError(f"--folds must be >= 1, got {self.folds}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")


C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a config dataclass, tagged with its class name."""
    data = dataclasses.asdict(config)
    data["_config"] = type(config).__name__
    return data


def config_to_json(config: Any) -> str:
    return json.dumps(config_to_dict(config), sort_keys=True)


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a config dataclass from a stored dict, ignoring keys it does not know.

    Raises:
        ConfigError: the dict was made from another config class.
    """
    tag = data.get("_config")
    if tag is not None and tag != cls.__name__:
        raise ConfigError(f"stored config is a {tag}, expected {cls.__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return cls(**kwargs)
