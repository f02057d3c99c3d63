"""``eval`` at native resolution: NIfTI masks against NIfTI ground truth, per 3D volume.

Two ways in (``eval`` dispatches here):

- a **folder** of predicted masks and ``--gt`` a folder of ground truth, matched by case key
  (:func:`acdctool.io.layouts.pair_folders`); ED/ES from ``Info.cfg`` beside the ground truth,
  else the LV volume of the ground truth (:mod:`acdctool.data.phases`);
- a **slice file** with ``--native``: its masks are exported to NIfTI in a temporary folder
  (the ``export`` stage; ``--like`` or the sources import-seg recorded) and scored against the
  native ground truth (``like``'s ``_gt`` masks, or the recorded ``source_gt``).

The report folder has the files of the slice-file report (``slices.csv``, ``volumes.csv``,
``clinical.csv``, ``summary.json``, ``dice_violin.png``), with ``summary["resolution"] ==
"native"`` and the ACDC challenge's table: per phase, per class, volume Dice and HD (mm).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from acdctool.config import EvalConfig, ExportConfig, config_to_dict
from acdctool.conventions import CLASSES
from acdctool.data.phases import assign_phases
from acdctool.errors import BadInputError, ConfigError, InputMissingError
from acdctool.io.acdc import find_patients, frame_paths
from acdctool.io.atomic import atomic_dir
from acdctool.io.labelmap import IDENTITY, decode, label_map_from
from acdctool.io.layouts import pair_folders
from acdctool.io.nifti import read_volume, to_labels
from acdctool.io.slices import SliceFile
from acdctool.progress import Progress, Tracker
from acdctool.provenance import make_provenance
from acdctool.report import plots
from acdctool.report.native import NativePair, evaluate_pairs
from acdctool.report.tables import overview
from acdctool.stages import eval as eval_stage
from acdctool.stages import export


def pairs_from_folders(pred_dir: Path, gt_dir: Path | None, config: EvalConfig) -> tuple[list[NativePair], list[str]]:
    """Prediction files matched with their ground truth by case key, phases assigned.

    Raises:
        ConfigError: no ``gt_dir``. InputMissingError, BadInputError: a prediction without
            ground truth, unreadable files, a dataset.json that does not map (naming the file).
    """
    if gt_dir is None or not Path(gt_dir).is_dir():
        raise ConfigError(f"{pred_dir} is a folder: give --gt GT_DIR, a folder of ground-truth NIfTI masks")
    cases, notes = pair_folders(Path(pred_dir), None, Path(gt_dir))
    pred_map, _ = label_map_from(config.labels, [Path(pred_dir), Path(pred_dir).parent])
    gt_map, _ = label_map_from(config.gt_labels, [Path(gt_dir), Path(gt_dir).parent])
    lv = {}
    for c in cases:
        if not c.phase:
            assert c.gt is not None
            vol = read_volume(c.gt)
            lv[c.key] = float((to_labels(vol, gt_map) == 3).sum())
    assign_phases(cases, lv, extra_frames=True)
    pairs = []
    for c in cases:
        assert c.gt is not None
        for model, path in c.preds.items():
            frame = c.frame if c.frame is not None else 1
            pairs.append(
                NativePair(c.key, c.patient, c.phase or "", frame, c.group, model, path, c.gt, pred_map, gt_map)
            )
    return pairs, notes


def pairs_from_slice_file(path: Path, like: Path | None, tmp: Path) -> list[NativePair]:
    """A slice file's masks exported into ``tmp``, each paired with its native ground truth.

    Raises:
        BadInputError: no native ground truth known for a volume. See also ``export``.
    """
    with SliceFile(path) as f:
        index = f.index
        if not f.has("pred") and not f.has("gt"):
            raise BadInputError(f"{path}: no masks to evaluate")
    sourced = "source_gt" in index.columns
    exported = export.run(ExportConfig(), export.Inputs(path, None if sourced else like), tmp / "pred")
    patients = {p.name: p for p in find_patients(like)} if like is not None and not sourced else {}
    pairs = []
    for (patient, phase, model), file in exported.volumes.items():
        first = index[(index.patient == patient) & (index.phase == phase) & (index.model == model)].iloc[0]
        if sourced and first.source_gt:
            gt, gt_map = Path(first.source_gt), decode(first.source_gt_labels)
        elif patient in patients:
            gt, gt_map = frame_paths(patients[patient], int(first.frame))[1], dict(IDENTITY)
            if not gt.is_file():
                raise InputMissingError(f"{gt}: missing native ground truth for {patient} {phase}")
        else:
            raise BadInputError(
                f"{path}: no native ground truth for {patient} {phase} (give --like ACDC_DIR, or import with --gt)"
            )
        key = first.case if sourced else f"{patient}_frame{int(first.frame):02d}"
        pairs.append(
            NativePair(key, patient, phase, int(first.frame), first.group, model, file, gt, dict(IDENTITY), gt_map)
        )
    return pairs


def run_native(
    config: EvalConfig,
    inputs: eval_stage.Inputs,
    output: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> eval_stage.Result:
    """Evaluate at native resolution and write the report folder (atomically).

    Raises:
        ConfigError: ``baseline`` given (compare two native reports instead), or a folder
            without a ground-truth folder. BadInputError, InputMissingError: see
            :func:`pairs_from_folders` and :func:`pairs_from_slice_file`. OutputError: the
            folder exists without ``force``.
    """
    if inputs.baseline is not None:
        raise ConfigError("--baseline compares slice files; evaluate each at native resolution instead")
    pred = Path(inputs.pred)
    notes: list[str] = []
    read = [inputs.pred, inputs.gt, inputs.like]
    with (
        atomic_dir(output, force, inputs=read) as out,
        tempfile.TemporaryDirectory(prefix="acdctool-native-") as scratch,
    ):
        if pred.is_dir():
            pairs, notes = pairs_from_folders(pred, inputs.gt, config)
            source = f"native: {pred} vs {inputs.gt}"
        else:
            if inputs.gt is not None:
                raise ConfigError("--gt with --native: the ground truth comes from --like or the file's sources")
            pairs = pairs_from_slice_file(pred, inputs.like, Path(scratch))
            source = f"native: {pred.name} exported, vs {'its sources' if inputs.like is None else inputs.like}"
        tracker = Tracker(progress, len(pairs), "volumes")
        tables = evaluate_pairs(pairs, hausdorff=config.hausdorff, workers=config.workers, on_pair=tracker.advance)
        tables.slices.to_csv(out / "slices.csv", index=False, float_format="%.6g")
        tables.volumes.to_csv(out / "volumes.csv", index=False, float_format="%.6g")
        tables.clinical.to_csv(out / "clinical.csv", index=False, float_format="%.6g")
        summary = eval_stage.summarise(tables.slices, tables.volumes, tables.clinical)
        summary.update(
            resolution="native",
            source=source,
            pred_file=str(pred.resolve()),
            gt_file=str(Path(inputs.gt).resolve()) if inputs.gt else None,
            acdc=by_phase(tables.volumes),
            notes=notes,
        )
        figures = []
        if config.plots and len(tables.slices):
            plots.violin({"prediction": tables.slices}, out / "dice_violin.png")
            figures.append("dice_violin.png")
        summary["figures"] = figures
        summary["config"] = config_to_dict(config)
        summary["provenance"] = (
            make_provenance([p for p in (pred, inputs.gt, inputs.like) if p])
            if inputs.provenance is None
            else inputs.provenance
        )
        (out / "summary.json").write_text(json.dumps(eval_stage._jsonable(summary), indent=2) + "\n")
    return eval_stage.Result(output, summary, overview(tables.slices, tables.volumes))


def by_phase(volumes: pd.DataFrame) -> dict[str, Any]:
    """The ACDC challenge table: per model and phase, mean volume Dice and HD (mm) per class."""
    out: dict[str, Any] = {}
    if not len(volumes):
        return out
    for (model, phase), part in volumes.groupby(["model", "phase"], sort=True):
        out.setdefault(str(model), {})[str(phase)] = {
            "n": len(part),
            "dice": {c: eval_stage._mean(part[f"dice_{c}"]) for c in CLASSES},
            "hd_mm": {c: eval_stage._mean(part[f"hd_{c}"]) for c in CLASSES},
        }
    return out
