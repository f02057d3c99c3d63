"""``qc``: flag the slices and patients of a segmentation file that need a human, without ground truth.

Writes a folder (atomically): ``slices.csv`` and ``patients.csv`` (every signal, risk,
predicted Dice when calibrated, flag, reasons), ``review.csv`` (slices worst first),
``flags.csv`` (flagged patients, then flagged slices), ``summary.json`` (config, provenance,
NVAE and calibration used, counts; scores against ground truth when the file has it) and
``qc_dice.png``. Ground truth, when present, is read only for ``gt_dice`` and the scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from acdctool.config import PatientDice, QcConfig, config_to_dict
from acdctool.io.atomic import atomic_dir
from acdctool.io.checkpoint import file_sha256
from acdctool.io.slices import SliceFile
from acdctool.progress import Progress
from acdctool.provenance import Provenance, make_provenance
from acdctool.qc.calibration import Calibration, jsonable
from acdctool.qc.features import available_groups
from acdctool.qc.fit import score_tables
from acdctool.qc.nvae import NvaeBank
from acdctool.qc.patients import PATIENT_KEY, patient_table
from acdctool.qc.report import flags_table, patient_reasons, review_table, slice_reasons
from acdctool.qc.table import slice_table
from acdctool.report.qc_plots import qc_figure

UNCALIBRATED_NOTE = (
    "no --calibration: predicted Dice needs a calibration (acdctool qc-calibrate on files with ground truth); "
    "slices are ranked and flagged by the uncalibrated risk score"
)


@dataclass(frozen=True)
class Inputs:
    """What qc reads."""

    seg: Path
    """Masks to check: gen-seg, make-3gram, refine or imported output (``pred``)."""
    nvae: tuple[Path, ...] = ()
    """Single-mask NVAE checkpoints (one per fold: each patient gets one that never saw it)."""
    calibration: Path | None = None
    """A ``qc-calibration`` file (``qc-calibrate``); None: uncalibrated risk only."""
    provenance: Provenance | None = None


@dataclass
class Result:
    """The QC folder and its headline numbers."""

    out_dir: Path
    summary: dict[str, Any]
    slices: int = 0
    patients: int = 0
    flagged_slices: int = 0
    flagged_patients: int = 0
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)


def run(
    config: QcConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Compute the QC signals of every slice, combine them, flag and rank.

    Args:
        config: flag thresholds, probabilities on/off, batch size, device, figure.
        inputs: the segmentation file, NVAE checkpoints, calibration (and provenance).
        output: QC folder, created atomically.
        force: replace an existing folder.
        progress: one event per batch of rows (unit ``rows``).

    Raises:
        BadInputError: no ``pred`` masks, no rows, bad labels or spacing; an NVAE that is not a
            single-mask one or of another image size; a calibration needing signals this run
            lacks (probs, NVAE). FileKindError, SchemaVersionError, InputMissingError: inputs of
            the wrong kind or version, or missing. OutputError: the folder exists without ``force``.

    Example:
        >>> run(QcConfig(), Inputs(Path("seg.h5"), nvae=(Path("nvae.pt"),)), Path("qc"))  # doctest: +SKIP
    """
    seg = Path(inputs.seg)
    calibration = Calibration.load(inputs.calibration) if inputs.calibration is not None else None
    notes: list[str] = []
    with SliceFile(seg) as f:
        bank = NvaeBank.load(inputs.nvae, f.shape[0], config.device) if inputs.nvae else None
        st = slice_table(
            f,
            bank=bank,
            batch_size=config.batch_size,
            use_probs=config.use_probs,
            workers=config.workers,
            progress=progress,
        )
        file_info = {"path": str(seg.resolve()), "kind": f.kind, "rows": len(f), "has_gt": st.has_gt}
    table = st.table
    calib_info: dict[str, Any] | None = None
    if calibration is not None:
        table["pred_dice"], table["exp_dice"] = calibration.predict_slices(table)
        overlap = sorted(set(table["patient"]) & set(calibration.training_patients))
        calib_info = {
            "path": str(Path(inputs.calibration).resolve()),  # type: ignore[arg-type]
            "sha256": file_sha256(inputs.calibration),  # type: ignore[arg-type]
            "tool_version": calibration.tool_version,
            "features": calibration.features,
            "patient_model": calibration.patient_type,
            "oof": calibration.oof,
            "in_sample_patients": len(overlap),
        }
        if overlap:
            notes.append(
                f"{len(overlap)} patients of this file were used to fit the calibration: their predicted Dice is "
                "in-sample (optimistic for scoring)"
            )
    else:
        notes.append(UNCALIBRATED_NOTE)
    if bank is not None and (st.table["nvae_held_out"] != "yes").any():
        n = int(pd.unique(table.loc[table["nvae_held_out"] != "yes", "patient"]).size)
        notes.append(f"{n} patients scored by an NVAE that saw them or cannot tell (nvae_held_out)")
    score = "pred_dice" if calibration is not None else "risk"
    patients = patient_table(table)
    if calibration is not None:
        patients["pred_dice"] = calibration.predict_patients(patients)
        volumes = calibration.predict_patient_volumes(patients)
        if volumes is not None:
            patients["pred_vdice"] = volumes
    slice_flag = table[score] < config.flag_below if calibration else table[score] >= 1 - config.flag_below
    table["flag"] = slice_flag.astype(np.int8)
    table["reasons"] = slice_reasons(table)
    n_flag = table.groupby(list(PATIENT_KEY))["flag"].sum().rename("n_flagged").reset_index()
    patients = patients.merge(n_flag, on=list(PATIENT_KEY), how="left")
    # the patient Dice that flags: the volume Dice where the calibration predicts it (--patient-dice)
    patient_score = score
    if config.patient_dice == PatientDice.VOLUME.value and "pred_vdice" in patients.columns:
        patient_score = "pred_vdice"
    if calibration is not None:
        patients["flag"] = (patients[patient_score] < config.flag_patient_below).astype(np.int8)
    else:
        patients["flag"] = (patients[score] >= 1 - config.flag_patient_below).astype(np.int8)
    patients["reasons"] = patient_reasons(patients)
    summary: dict[str, Any] = {
        "input": file_info,
        "calibrated": calibration is not None,
        "score": score,
        "patient_score": patient_score,
        "signals": available_groups(table),
        "slices": len(table),
        "patients": len(patients),
        "flagged": {"slices": int(table["flag"].sum()), "patients": int(patients["flag"].sum())},
        "thresholds": {"slice": config.flag_below, "patient": config.flag_patient_below},
        "calibration": calib_info,
        "nvae": st.nvae or None,
        "notes": notes,
    }
    if st.has_gt:
        summary["scores_vs_gt"] = score_tables(table, patients)
    summary["config"] = config_to_dict(config)
    summary["provenance"] = (
        inputs.provenance
        if inputs.provenance is not None
        else make_provenance([p for p in (seg, *inputs.nvae, inputs.calibration) if p])
    )
    with atomic_dir(Path(output), force, inputs=[seg, *inputs.nvae, inputs.calibration]) as tmp:
        table.to_csv(tmp / "slices.csv", index=False, float_format="%.6g")
        patients.to_csv(tmp / "patients.csv", index=False, float_format="%.6g")
        review_table(table, patients, score, patient_score).to_csv(tmp / "review.csv", index=False, float_format="%.6g")
        flags_table(table, patients, score, patient_score).to_csv(tmp / "flags.csv", index=False, float_format="%.6g")
        if config.plots:
            label = "predicted Dice" if calibration is not None else "risk (uncalibrated)"
            threshold = config.flag_below if calibration is not None else 1 - config.flag_below
            truth = table["gt_dice"].to_numpy() if st.has_gt else None
            qc_figure(table[score].to_numpy(), truth, threshold, label, tmp / "qc_dice.png")
            summary["figures"] = ["qc_dice.png"]
        (tmp / "summary.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    return Result(
        Path(output),
        summary,
        slices=len(table),
        patients=len(patients),
        flagged_slices=summary["flagged"]["slices"],
        flagged_patients=summary["flagged"]["patients"],
        calibrated=calibration is not None,
        notes=notes,
    )
