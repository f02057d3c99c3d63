"""``qc-calibrate``: fit the QC combination on segmentations with ground truth, out of fold.

Computes the QC signals of every row (as ``qc`` does), keeps the training patients (fold ≥ 0;
test patients are left out), fits and scores the combination out of fold
(:func:`acdctool.qc.fit.fit_qc`: grouped by patient and by the file's fold column), and writes
the final model, fitted on all given patients, to a ``qc-calibration`` JSON file
(:class:`acdctool.qc.calibration.Calibration`, ``docs/FORMAT.md``) with the out-of-fold
scores. A calibration is derived from the data it was fitted on: keep it with that data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from acdctool.config import QcCalibrateConfig, config_to_dict
from acdctool.conventions import CLASSES
from acdctool.errors import BadInputError, ConfigError
from acdctool.io.atomic import atomic_path, check_output
from acdctool.io.checkpoint import file_sha256
from acdctool.io.slices import SliceFile
from acdctool.progress import Progress
from acdctool.provenance import Provenance, make_provenance
from acdctool.qc.boost import BoostSettings
from acdctool.qc.calibration import Calibration
from acdctool.qc.features import FeatureGroup, feature_names
from acdctool.qc.fit import fit_qc
from acdctool.qc.nvae import NvaeBank
from acdctool.qc.table import slice_table

KEY = ("file", "patient", "model")
"""A patient in calibration: the same patient in two files (or by two models) is two patients,
grouped together in the folds (by ``patient``)."""


@dataclass(frozen=True)
class Inputs:
    """What qc-calibrate reads."""

    segs: tuple[Path, ...]
    """Segmentation files with ground truth (``gt``) and folds, e.g. out-of-fold gen-seg output."""
    nvae: tuple[Path, ...] = ()
    """Single-mask NVAE checkpoints, as given to ``qc`` (one per fold)."""
    provenance: Provenance | None = None


@dataclass
class Result:
    """The calibration written and its out-of-fold scores."""

    path: Path
    scores: dict[str, Any]
    rows: int = 0
    patients: int = 0
    excluded_rows: int = 0
    features: list[str] = field(default_factory=list)
    patient_model: str = "mean"
    notes: list[str] = field(default_factory=list)


def run(
    config: QcCalibrateConfig,
    inputs: Inputs,
    output: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    oof_csv: Path | None = None,
) -> Result:
    """Fit the QC combination and write a calibration file.

    Args:
        config: feature groups, ridge penalty, score thresholds, batch size, device.
        inputs: segmentation files with ground truth, NVAE checkpoints (and provenance).
        output: the calibration JSON file (written atomically).
        force: replace an existing ``output`` (and ``oof_csv``).
        progress: one event per batch of rows of each file (unit ``rows``, phase = file name).
        oof_csv: also write the out-of-fold predictions per slice (with ``gt_dice``) here.

    Raises:
        BadInputError: a file without ``gt`` or ``pred``, no training patient, fewer than two
            patients; files of different slice sizes. ConfigError: ``features`` asks for a
            group the inputs do not provide. OutputError: ``output`` exists without ``force``.

    Example:
        >>> inputs = Inputs((Path("seg.h5"),), nvae=(Path("nvae.pt"),))
        >>> run(QcCalibrateConfig(), inputs, Path("qc.json")).scores["slice"]  # doctest: +SKIP
    """
    segs = tuple(Path(p) for p in inputs.segs)
    if not segs:
        raise ConfigError("qc-calibrate needs at least one segmentation file")
    srcs = (*segs, *inputs.nvae)
    check_output(Path(output), force, srcs)
    if oof_csv is not None:
        if Path(oof_csv).resolve() == Path(output).resolve():
            raise ConfigError(f"--oof {oof_csv}: the same path as the calibration file")
        check_output(Path(oof_csv), force, srcs)
    tables, files, probs_everywhere, bank, shape = [], [], True, None, None
    for i, path in enumerate(segs):
        with SliceFile(path) as f:
            if not f.has("gt"):
                raise BadInputError(f"{path}: no ground truth ('gt'): calibration needs masks with known true Dice")
            if shape is not None and f.shape != shape:
                raise BadInputError(f"{path}: slices are {f.shape} px, {segs[0]} has {shape}")
            shape = f.shape
            if inputs.nvae and bank is None:
                bank = NvaeBank.load(inputs.nvae, f.shape[0], config.device)
            st = slice_table(
                f,
                bank=bank,
                batch_size=config.batch_size,
                use_probs=config.use_probs,
                workers=config.workers,
                progress=None if progress is None else _phase(progress, path.name),
            )
            files.append({"path": str(path.resolve()), "sha256": file_sha256(path), "kind": f.kind, "rows": len(f)})
        probs_everywhere &= st.has_probs
        tables.append(st.table.assign(file=i))
    table = pd.concat(tables, ignore_index=True)
    groups = _groups(config, probs_everywhere, bank is not None)
    train = table["fold"].to_numpy() >= 0
    excluded = int((~train).sum())
    table = table[train].reset_index(drop=True)
    if table["patient"].nunique() < 2:
        raise BadInputError("fewer than two training patients (fold >= 0) in the inputs: nothing to fit out of fold")
    names = {c: feature_names(groups, cls=c) for c in CLASSES}
    fitted = fit_qc(
        table,
        names,
        key=KEY,
        alpha=config.alpha,
        boost=BoostSettings() if config.boost else None,
        slice_threshold=config.slice_threshold,
        patient_threshold=config.patient_threshold,
    )
    notes = []
    if excluded:
        notes.append(f"left out {excluded} rows of test patients (fold -1): calibration uses training patients only")
    if bank is not None and (table["nvae_held_out"] != "yes").any():
        n = int(table.loc[table["nvae_held_out"] != "yes", "patient"].nunique())
        notes.append(
            f"{n} patients scored by an NVAE that saw them or cannot tell: their NVAE agreement is optimistic, "
            "give one NVAE per fold"
        )
    folds = sorted(int(k) for k in np.unique(table["fold"]))
    oof = {
        **fitted.scores,
        "rows": len(table),
        "patients": int(table["patient"].nunique()),
        "folds": folds if len(folds) >= 2 else "patients dealt into 5 parts (fewer than two folds)",
    }
    calibration = Calibration(
        slice_model=fitted.slice_model,
        patient_type=fitted.patient_type,
        patient_model=fitted.patient_model,
        volume_model=fitted.volume_model,
        booster=fitted.booster,
        training_patients=sorted(table["patient"].unique().tolist()),
        oof=oof,
        config=config_to_dict(config),
        provenance=make_provenance(srcs) if inputs.provenance is None else inputs.provenance,
        training={
            "files": files,
            "nvae": None if bank is None else bank.info,
            "feature_groups": groups,
            "rows": len(table),
            "excluded_rows": excluded,
        },
    )
    calibration.save(Path(output), force, srcs)
    if oof_csv is not None:
        with atomic_path(Path(oof_csv), force, srcs) as tmp:
            fitted.oof_slices.assign(file=fitted.oof_slices["file"].map(lambda i: segs[int(i)].name)).to_csv(
                tmp, index=False, float_format="%.10g"
            )
    return Result(
        Path(output),
        fitted.scores,
        rows=len(table),
        patients=int(table["patient"].nunique()),
        excluded_rows=excluded,
        features=fitted.slice_model.features,
        patient_model=fitted.patient_type,
        notes=notes,
    )


def _groups(config: QcCalibrateConfig, has_probs: bool, has_nvae: bool) -> list[str]:
    available = [FeatureGroup.MASK.value]
    if has_probs and config.use_probs:
        available.append(FeatureGroup.PROBS.value)
    if has_nvae:
        available.append(FeatureGroup.NVAE.value)
    if not config.features:
        return available
    how = {"probs": "'probs' in every file (gen-seg --save-probs)", "nvae": "--nvae CKPT"}
    missing = [g for g in config.features if g not in available]
    if missing:
        raise ConfigError(f"--features {','.join(missing)} needs {' and '.join(how[g] for g in missing)}")
    return [g for g in available if g in config.features]


def _phase(progress: Progress, name: str) -> Progress:
    from dataclasses import replace

    return lambda event: progress(replace(event, phase=name))
