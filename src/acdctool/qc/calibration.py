"""The ``qc-calibration`` file: a fitted QC combination, versioned and self-describing (JSON).

Written by ``acdctool qc-calibrate``, read by ``acdctool qc --calibration``; the format is
documented in ``docs/FORMAT.md``. It holds the feature names, the slice model (per-class
hurdle models averaged and calibrated, :class:`acdctool.qc.hurdle.SliceModel`), the patient model (``mean`` of the slice
predictions, or ``linear`` on :data:`acdctool.qc.patients.PATIENT_FEATURES`), the volume-Dice
line (optional), the patients it
was fitted on, its out-of-fold scores, config and provenance. A file of another format, kind
or schema version is refused.

Example:
    >>> cal = Calibration.load("qc_calibration.json")  # doctest: +SKIP
    >>> predicted, expected = cal.predict_slices(table)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from acdctool import __version__
from acdctool.errors import BadInputError, FileKindError, InputMissingError, SchemaVersionError
from acdctool.io.atomic import atomic_path
from acdctool.qc.boost import Booster
from acdctool.qc.features import feature_matrix, groups_of
from acdctool.qc.fit import class_inputs
from acdctool.qc.hurdle import SliceModel
from acdctool.qc.model import LinearIsotonic
from acdctool.qc.patients import PATIENT_FEATURES, patient_features
from acdctool.qc.volume_dice import VolumeModel

__all__ = ["FORMAT", "KIND", "SCHEMA_VERSION", "Calibration", "jsonable"]

FORMAT = "acdctool-qc-calibration"
KIND = "qc-calibration"
SCHEMA_VERSION = 1
PATIENT_MODELS = ("mean", "linear")


@dataclass
class Calibration:
    """A fitted QC combination.

    Attributes:
        slice_model: features → predicted slice Dice.
        patient_type: ``mean`` (patient = mean of its slices' predictions) or ``linear``.
        patient_model: the ``linear`` model (None for ``mean``).
        training_patients: patients it was fitted on (a ``qc`` run on them is in-sample).
        oof: out-of-fold scores of the fitting (see ``qc-calibrate``).
        config, provenance: of the run that fitted it.
        training: files, NVAE checkpoints and row counts it was fitted on.
        tool_version: acdctool version that wrote it.
        volume_model: patient table → predicted volume Dice (:mod:`acdctool.qc.volume_dice`);
            None in files fitted without the truth's pixel counts (written before it existed).
        booster: boosted trees whose prediction is averaged with the slice model's median
            (:mod:`acdctool.qc.boost`); None: the median alone.
    """

    slice_model: SliceModel
    patient_type: str = "mean"
    patient_model: LinearIsotonic | None = None
    training_patients: list[str] = field(default_factory=list)
    oof: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    tool_version: str = __version__
    volume_model: VolumeModel | None = None
    booster: Booster | None = None

    def __post_init__(self) -> None:
        if self.patient_type not in PATIENT_MODELS:
            raise BadInputError(f"patient model must be one of {', '.join(PATIENT_MODELS)}, got {self.patient_type!r}")
        if self.patient_type == "linear" and self.patient_model is None:
            raise BadInputError("a 'linear' patient model needs its coefficients")
        if self.patient_model is not None and list(self.patient_model.features) != list(PATIENT_FEATURES):
            raise BadInputError(
                f"patient model features {self.patient_model.features} are not {list(PATIENT_FEATURES)}"
            )
        groups_of(self.features)  # unknown names fail here

    @property
    def features(self) -> list[str]:
        extra = self.booster.features if self.booster is not None else []
        return list(dict.fromkeys([*self.slice_model.features, *extra]))

    @property
    def requires(self) -> list[str]:
        """Feature groups a ``qc`` run must provide: ``mask``, ``probs``, ``nvae``."""
        return groups_of(self.features)

    def predict_slices(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(predicted, expected)`` Dice of every row of a QC slice table: the conditional
        median (least absolute error; averaged with the boosted trees' prediction when the
        calibration has them) and the conditional mean (what a patient averages).

        Raises:
            BadInputError: the table lacks the signals some feature needs.
        """
        feature_matrix(table.iloc[:0], self.features)  # one clear error for missing signals
        xs, present = class_inputs(table, {c: m.features for c, m in self.slice_model.classes.items()})
        predicted, expected = self.slice_model.predictions(xs, present)
        if self.booster is not None:
            boosted = self.booster.predict(feature_matrix(table, self.booster.features))
            predicted = np.clip((predicted + boosted) / 2, 0.0, 1.0)
        return predicted, expected

    def predict_patients(self, patients: pd.DataFrame) -> np.ndarray:
        """Predicted Dice of every row of a patient table (its ``pred_*`` from the slices' expected Dice)."""
        if self.patient_model is None:
            return patients["pred_mean"].to_numpy(np.float64)
        return self.patient_model.predict(patient_features(patients))

    def predict_patient_volumes(self, patients: pd.DataFrame) -> np.ndarray | None:
        """Predicted volume Dice of every row of a patient table; None without a volume model.

        Raises:
            BadInputError: the table lacks the model's input (e.g. ``prob_vdice`` without probs).
        """
        if self.volume_model is None:
            return None
        if self.volume_model.feature not in patients.columns:
            need = self.volume_model.feature
            raise BadInputError(f"the calibration's volume model needs {need!r}, not computed here")
        return self.volume_model.predict(patients)

    # ---- file ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "features": self.features,
            "requires": self.requires,
            "slice_model": self.slice_model.to_dict(),
            "patient_model": {
                "type": self.patient_type,
                **({"model": self.patient_model.to_dict()} if self.patient_model is not None else {}),
            },
            **({"volume_model": self.volume_model.to_dict()} if self.volume_model is not None else {}),
            **({"slice_boost": self.booster.to_dict()} if self.booster is not None else {}),
            "training_patients": sorted(self.training_patients),
            "training": self.training,
            "oof": self.oof,
            "config": self.config,
            "provenance": self.provenance,
        }

    def save(self, path: Path, force: bool = False, inputs: tuple[Path, ...] = ()) -> Path:
        """Write the JSON file atomically.

        Raises:
            OutputError: exists without ``force``, is an input, or cannot be written.
        """
        text = json.dumps(jsonable(self.to_dict()), indent=1) + "\n"
        with atomic_path(Path(path), force, inputs) as tmp:
            tmp.write_text(text)
        return Path(path)

    @classmethod
    def load(cls, path: Path | str) -> Calibration:
        """Read and check a calibration file.

        Raises:
            InputMissingError: no such file. FileKindError: not JSON, not a QC calibration
            (format or kind). SchemaVersionError: another schema version. BadInputError:
            malformed content or unknown features.
        """
        path = Path(path)
        if not path.is_file():
            raise InputMissingError(f"{path}: no such calibration file")
        try:
            d = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise FileKindError(
                f"{path}: not a JSON file (expected a qc-calibration from `acdctool qc-calibrate`)"
            ) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise FileKindError(f"{path}: not an acdctool QC calibration (made by `acdctool qc-calibrate`)")
        if d.get("kind") != KIND:
            raise FileKindError(f"{path}: a '{d.get('kind')}' file, expected '{KIND}'")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path}: calibration schema version {d.get('schema_version')} "
                f"(acdctool {d.get('tool_version', '?')}); this acdctool {__version__} reads version "
                f"{SCHEMA_VERSION}: re-run qc-calibrate"
            )
        try:
            pm = d["patient_model"]
            ptype = pm["type"]
            return cls(
                slice_model=SliceModel.from_dict(d["slice_model"]),
                patient_type=ptype,
                patient_model=LinearIsotonic.from_dict(pm["model"]) if ptype == "linear" else None,
                training_patients=list(d.get("training_patients", [])),
                oof=d.get("oof", {}),
                config=d.get("config", {}),
                provenance=d.get("provenance", {}),
                training=d.get("training", {}),
                tool_version=str(d.get("tool_version", "?")),
                volume_model=VolumeModel.from_dict(d["volume_model"]) if "volume_model" in d else None,
                booster=Booster.from_dict(d["slice_boost"]) if "slice_boost" in d else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"{path}: malformed calibration ({type(exc).__name__}: {exc})") from None
        except BadInputError as exc:
            raise BadInputError(f"{path}: {exc}") from None


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers and non-finite floats as None (JSON null)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
