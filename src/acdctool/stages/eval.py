"""``eval``: compare predicted masks with ground truth; optionally before/after a correction.

The report folder holds ``slices.csv``, ``volumes.csv``, ``clinical.csv``, ``summary.json``
and PNG figures; with a baseline also ``comparison.csv``; with a QC folder (``acdctool qc``)
also ``qc_scores.csv``, how well its predicted Dice and each of its signals detect bad slices
and patients (:mod:`acdctool.qc.report`). It is written into a temp folder
and moved into place only when complete, so a failure never leaves a partial report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from acdctool.config import EvalConfig, config_to_dict
from acdctool.conventions import CLASSES, ROW_KEY, SLICE_KEY
from acdctool.errors import BadInputError, ConfigError
from acdctool.io.atomic import atomic_dir
from acdctool.io.slices import SliceFile
from acdctool.metrics import anatomy
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance
from acdctool.qc.report import read_qc_dir, score_against_truth, scores_frame
from acdctool.qc.scoring import PATIENT_THRESHOLD, SLICE_THRESHOLD
from acdctool.report import plots
from acdctool.report.compare import clinical_change, compare
from acdctool.report.tables import (
    clinical_agreement,
    clinical_table,
    overview,
    slice_metrics,
    volume_metrics,
)


@dataclass
class Predictions:
    """Masks to evaluate, aligned row by row with their ground truth."""

    path: Path
    index: pd.DataFrame
    pred: np.ndarray
    gt: np.ndarray
    image: np.ndarray | None
    source: str
    """What was compared: e.g. ``pred vs gt``, ``gt vs gt (self-check)``, ``pred vs gt of X``."""


@dataclass(frozen=True)
class Inputs:
    """What eval reads."""

    pred: Path
    """The masks to evaluate: any stage's output (prep: ground truth against itself)."""
    gt: Path | None = None
    """Take ground truth from this file instead (rows matched by patient/phase/slice)."""
    baseline: Path | None = None
    """The masks before a correction (e.g. the gen-seg file given to refine), rows matched by
    patient/phase/slice/model; adds deltas, counts and figures."""
    native: bool = False
    """Evaluate a slice file at native resolution: its masks exported to NIfTI (through
    ``like``, or the sources import-seg recorded) against the native ground truth. A ``pred``
    folder is always evaluated at native resolution (against the ``gt`` folder)."""
    like: Path | None = None
    """``native``: the ACDC folder the slice file was prepped from (images and ``_gt`` masks)."""
    qc: Path | None = None
    """A QC folder of the same masks (``acdctool qc``): scores its predictions against the
    true Dice (AUC for slices < 0.8 and patients < 0.85, Spearman, MAE) in ``qc_scores.csv``."""
    provenance: Provenance | None = None
    """Stored in ``summary.json``; None: made here, without a command line."""


@dataclass
class Result:
    """The report folder, the summary written to its ``summary.json``, and the terminal overview.

    ``overview`` (not written) is :func:`acdctool.report.tables.overview`: the means the terminal
    table shows, each with the number of slices or volumes it covers.
    """

    out_dir: Path
    summary: dict[str, Any]
    overview: dict[str, Any]


def load_predictions(path: Path, gt_path: Path | None = None, with_image: bool = True) -> Predictions:
    """Read the masks to evaluate and align ground truth with them by (patient, phase, slice).

    ``with_image=False`` skips the image array (a baseline's masks need no pictures).

    A ``prep`` file (no ``pred`` array) is its ground truth evaluated against itself.

    Raises:
        BadInputError: no rows; no ground truth and no ``gt_path``; rows without a match (named);
            different geometry between matched rows; labels outside 0..3; bad spacing.
    """
    with SliceFile(path) as f:
        if len(f) == 0:
            raise BadInputError(f"{path}: the file has no rows; nothing to evaluate")
        index = f.index.copy()
        name = "pred" if f.has("pred") else "gt"
        if name == "gt" and not f.has("gt"):
            raise BadInputError(f"{path}: neither predictions ('pred') nor ground truth ('gt') to evaluate")
        pred = f.read(name)
        image = f.read("image") if with_image else None
        own_gt = f.read("gt") if f.has("gt") and gt_path is None else None
    _check_labels(path, name, pred)
    _check_spacing(path, index)
    if gt_path is None:
        if own_gt is None:
            raise BadInputError(f"{path}: no ground truth ('gt' array); pass --gt FILE with the reference masks")
        source = "gt vs gt (self-check)" if name == "gt" else "pred vs gt"
        return Predictions(Path(path), index, pred, own_gt, image, source)
    with SliceFile(gt_path) as g:
        if not g.has("gt"):
            raise BadInputError(f"{gt_path}: no ground truth ('gt' array)")
        ref_index, ref = g.index, g.read("gt")
    rows = match_rows(index, ref_index, list(SLICE_KEY), Path(path), Path(gt_path))
    if ref.shape[1:] != pred.shape[1:]:
        raise BadInputError(f"{gt_path}: slices are {ref.shape[1:]} px, {path} has {pred.shape[1:]}")
    for col in ("spacing_row", "spacing_col", "thickness"):
        a, b = index[col].to_numpy(), ref_index[col].to_numpy()[rows]
        bad = np.flatnonzero(~np.isclose(a, b, rtol=1e-4))
        if bad.size:
            r = index.iloc[bad[0]]
            raise BadInputError(
                f"{gt_path}: {col} differs from {path} at {r.patient} {r.phase} slice {r.slice} "
                "(different prep settings?)"
            )
    gt = ref[rows]
    _check_labels(gt_path, "gt", gt)
    return Predictions(Path(path), index, pred, gt, image, f"{name} vs gt of {Path(gt_path).name}")


def match_rows(index: pd.DataFrame, ref: pd.DataFrame, key: list[str], path: Path, ref_path: Path) -> np.ndarray:
    """Row numbers of ``ref`` matching each row of ``index`` on ``key`` (never by position).

    Raises:
        BadInputError: ``ref`` repeats a key, or some rows have no match (the first named).
    """
    ref_keys = ref[key].reset_index(drop=True)
    dup = ref_keys.duplicated()
    if dup.any():
        r = ref_keys[dup].iloc[0]
        raise BadInputError(f"{ref_path}: several rows for {' '.join(str(r[k]) for k in key)}")
    lookup = pd.Series(np.arange(len(ref_keys)), index=pd.MultiIndex.from_frame(ref_keys))
    wanted = pd.MultiIndex.from_frame(index[key].reset_index(drop=True))
    rows = lookup.reindex(wanted)
    missing = rows.isna().to_numpy()
    if missing.any():
        first = index[key].iloc[int(np.flatnonzero(missing)[0])]
        raise BadInputError(
            f"{ref_path}: no row for {' '.join(str(first[k]) for k in key)} of {path} "
            f"({int(missing.sum())} of {len(index)} rows unmatched)"
        )
    return rows.to_numpy().astype(np.int64)


def _check_labels(path: Path, name: str, masks: np.ndarray) -> None:
    if masks.size and masks.max() > 3:
        row = int(np.flatnonzero((masks > 3).reshape(len(masks), -1).any(axis=1))[0])
        raise BadInputError(f"{path}: '{name}' has labels outside 0..3 (row {row})")


def _check_spacing(path: Path, index: pd.DataFrame) -> None:
    sp = index[["spacing_row", "spacing_col", "thickness"]].to_numpy(np.float64)
    bad = ~(np.isfinite(sp) & (sp > 0)).all(axis=1)
    if bad.any():
        r = index.iloc[int(np.flatnonzero(bad)[0])]
        raise BadInputError(f"{path}: missing or invalid spacing for {r.patient} {r.phase} slice {r.slice}")


def run(
    config: EvalConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Evaluate a slice file and write a report folder.

    Args:
        config: thresholds, figures, workers.
        inputs: the masks to evaluate, optional ground truth and baseline files (and provenance).
        output: report folder, created atomically.
        force: replace an existing report folder.
        progress: one event per part of the report done (unit ``parts``: slice metrics, volume
            metrics, clinical indices, the comparison with a baseline, figures).

    Returns:
        :class:`Result` with the summary written to ``summary.json``.

    Raises:
        BadInputError, FileKindError, SchemaVersionError, InputMissingError: bad inputs (nothing
            is written); OutputError: the folder exists without ``force``, or holds an input.

    A folder of NIfTI masks (or ``inputs.native``) is evaluated at native resolution instead,
    per 3D volume as the ACDC challenge does (:mod:`acdctool.stages._native_eval`).

    Example:
        >>> run(EvalConfig(), Inputs(Path("refined.h5"), baseline=Path("seg.h5")), Path("report"))  # doctest: +SKIP
        >>> run(EvalConfig(), Inputs(Path("nnunet_out"), gt=Path("labelsTs")), Path("report"))  # doctest: +SKIP
    """
    if inputs.native or Path(inputs.pred).is_dir():
        if inputs.qc is not None:
            raise ConfigError("--qc scores the QC of a slice file's rows: not with --native or a NIfTI folder")
        from acdctool.stages._native_eval import run_native

        return run_native(config, inputs, Path(output), force=force, progress=progress)
    pred_path, gt_path, baseline_path, out_dir = inputs.pred, inputs.gt, inputs.baseline, Path(output)
    qc_run = read_qc_dir(inputs.qc) if inputs.qc is not None else None
    after = load_predictions(pred_path, gt_path)
    before = None
    if baseline_path is not None:
        before = load_predictions(baseline_path, gt_path, with_image=False)
        rows = match_rows(after.index, before.index, list(ROW_KEY), Path(pred_path), Path(baseline_path))
        before = Predictions(
            before.path,
            before.index.iloc[rows].reset_index(drop=True),
            before.pred[rows],
            before.gt[rows],
            None,
            before.source,
        )
        if not np.array_equal(before.gt, after.gt):
            raise BadInputError(f"{baseline_path}: its ground truth differs from that of {pred_path}")
    tracker = Tracker(progress, 3 + (before is not None) + bool(config.plots), "parts")
    with atomic_dir(out_dir, force, inputs=[pred_path, gt_path, baseline_path]) as tmp:
        table = slice_metrics(after.index, after.pred, after.gt, hausdorff=config.hausdorff, workers=config.workers)
        tracker.advance()
        volumes = volume_metrics(after.index, after.pred, after.gt, hausdorff=config.hausdorff, workers=config.workers)
        tracker.advance()
        clinical = clinical_table(after.index, after.pred, after.gt)
        tracker.advance()
        table.to_csv(tmp / "slices.csv", index=False, float_format="%.6g")
        volumes.to_csv(tmp / "volumes.csv", index=False, float_format="%.6g")
        clinical.to_csv(tmp / "clinical.csv", index=False, float_format="%.6g")
        summary = summarise(table, volumes, clinical)
        summary.update(
            source=after.source,
            pred_file=str(Path(pred_path).resolve()),
            gt_file=str(Path(gt_path).resolve()) if gt_path else None,
        )
        if qc_run is not None:
            summary["qc"] = score_against_truth(qc_run, table, SLICE_THRESHOLD, PATIENT_THRESHOLD, volumes=volumes)
            scores_frame(summary["qc"]).to_csv(tmp / "qc_scores.csv", index=False, float_format="%.6g")
        figures = {}
        compared = None
        if before is not None:
            base_table = slice_metrics(
                before.index, before.pred, before.gt, hausdorff=config.hausdorff, workers=config.workers
            )
            families = after.index["refine_family"] if "refine_family" in after.index else None
            deltas, comparison = compare(
                base_table, table, config.threshold, config.top_k, config.worse_threshold, families
            )
            comparison["clinical_mae"] = clinical_change(clinical_table(before.index, before.pred, before.gt), clinical)
            deltas.to_csv(tmp / "comparison.csv", index=False, float_format="%.6g")
            comparison["baseline_file"] = str(Path(baseline_path).resolve())  # type: ignore[arg-type]
            summary["comparison"] = comparison
            compared = Compared(before, base_table, deltas, comparison)
            tracker.advance()
        if config.plots:
            figures = _figures(tmp, after, table, compared, config)
            tracker.advance()
        summary["figures"] = sorted(figures)
        summary["config"] = config_to_dict(config)
        summary["provenance"] = (
            make_provenance([p for p in (pred_path, gt_path, baseline_path, inputs.qc) if p])
            if inputs.provenance is None
            else inputs.provenance
        )
        (tmp / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2, sort_keys=False) + "\n")
    return Result(out_dir, summary, overview(table, volumes))


def summarise(table: pd.DataFrame, volumes: pd.DataFrame, clinical: pd.DataFrame) -> dict[str, Any]:
    """The summary: overall means, convention counts, validity, groupings, clinical agreement."""
    names = list(CLASSES)
    failed = {c: int((table["failed"].str.split(";").explode() == c).sum()) for c in anatomy.CRITERIA_NAMES}
    summary: dict[str, Any] = {
        "slices": _stats(table),
        "conventions": {
            "dice": {n: table[f"dice_{n}_conv"].value_counts().to_dict() for n in names},
            "rule": "both masks empty: Dice 1, HD 0; exactly one empty: Dice 0, HD undefined (NaN, "
            "excluded from HD means)",
        },
        "volumes": {
            "n": len(volumes),
            "dice": {n: _mean(volumes[f"dice_{n}"]) for n in [*names, "mean"]} if len(volumes) else {},
            "hd_mm": {n: _mean(volumes[f"hd_{n}"]) for n in names} if len(volumes) else {},
            "hd95_mm": {n: _mean(volumes[f"hd95_{n}"]) for n in names} if len(volumes) else {},
        },
        "anatomy": {
            "valid": int(table["valid"].sum()),
            "invalid": int((~table["valid"]).sum()),
            "valid_fraction": _mean(table["valid"].astype(float)),
            "failures_per_criterion": {k: v for k, v in failed.items() if v},
        },
        "by": {
            col: {str(k): _stats(part) for k, part in table.groupby(col, sort=True)}
            for col in ("model", "group", "phase", "position", "split")
        },
        "clinical": {
            "patients": int(clinical["patient"].nunique()) if len(clinical) else 0,
            "agreement": clinical_agreement(clinical),
        },
    }
    return summary


def _stats(table: pd.DataFrame) -> dict[str, Any]:
    names = list(CLASSES)
    return {
        "n": len(table),
        "dice": {n: _mean(table[f"dice_{n}"]) for n in [*names, "mean"]},
        "hd_mm": {n: _mean(table[f"hd_{n}"]) for n in names},
        "hd95_mm": {n: _mean(table[f"hd95_{n}"]) for n in names},
        "valid_fraction": _mean(table["valid"].astype(float)),
    }


def _mean(series: pd.Series) -> float | None:
    value = series.mean(skipna=True)
    return None if pd.isna(value) else float(value)


@dataclass
class Compared:
    """A baseline's masks, its per-slice table, the per-row deltas and the comparison summary."""

    before: Predictions
    table: pd.DataFrame
    deltas: pd.DataFrame
    summary: dict[str, Any]


def _figures(
    tmp: Path, after: Predictions, table: pd.DataFrame, compared: Compared | None, config: EvalConfig
) -> dict[str, Path]:
    figs: dict[str, Path] = {}
    assert after.image is not None
    if compared is None:
        figs["dice_violin.png"] = plots.violin({"prediction": table}, tmp / "dice_violin.png")
        worst = table.sort_values("dice_mean", kind="stable").index[: config.top_k].to_numpy()
        figs["montage_worst.png"] = plots.montage(
            after.image[worst],
            {"ground truth": after.gt[worst], "prediction": after.pred[worst]},
            [_caption(table, i, f"Dice {table.dice_mean[i]:.3f}") for i in worst],
            tmp / "montage_worst.png",
        )
        return figs
    deltas = compared.deltas
    figs["dice_violin.png"] = plots.violin({"before": compared.table, "after": table}, tmp / "dice_violin.png")
    figs["dice_delta_hist.png"] = plots.delta_histogram(deltas, config.threshold, tmp / "dice_delta_hist.png")
    figs["dice_scatter.png"] = plots.scatter(deltas, tmp / "dice_scatter.png")
    for kind in ("improved", "deteriorated"):
        rows = np.array([r["row"] for r in compared.summary[f"top_{kind}"]], dtype=np.int64)
        figs[f"montage_{kind}.png"] = plots.montage(
            after.image[rows],
            {"ground truth": after.gt[rows], "before": compared.before.pred[rows], "after": after.pred[rows]},
            [_caption(table, i, f"{deltas.dice_mean_before[i]:.3f} → {deltas.dice_mean_after[i]:.3f}") for i in rows],
            tmp / f"montage_{kind}.png",
        )
    return figs


def _caption(table: pd.DataFrame, i: int, extra: str) -> str:
    r = table.iloc[i]
    model = f" {r.model}" if r.model else ""
    return f"{r.patient} {r.phase} s{r.slice}{model}\n{extra}"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
