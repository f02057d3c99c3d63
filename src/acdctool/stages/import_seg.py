"""``import-seg``: masks made by another tool (NIfTI) + their images → a ``seg`` slice file.

Cases come from a prediction folder matched with an image folder (and optionally ground
truth) by file name (nnU-Net ``CASE_0000``/``CASE``, ACDC ``patientNNN_frameYY[_SUFFIX]``;
:mod:`acdctool.io.layouts`), or from a CSV manifest. ED/ES phases come from ``Info.cfg``, the
manifest, or the LV volume (:mod:`acdctool.data.phases`). Each patient is cropped around its
predicted heart and resized as prep does (:mod:`acdctool.data.imported`), so ``eval``,
``make-3gram``, ``refine``, ``qc`` and ``export`` work on the output unchanged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from acdctool.config import ImportSegConfig, config_to_dict
from acdctool.data.imported import SOURCE_COLUMNS, LoadedCase, load_case, lv_volume_ml, patient_rows
from acdctool.data.phases import assign_phases
from acdctool.data.prep import ordered_map
from acdctool.errors import AcdcToolError, BadInputError, ConfigError
from acdctool.io.labelmap import IDENTITY, label_map_from
from acdctool.io.layouts import Case, pair_folders, read_manifest
from acdctool.io.slices import SliceWriter
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance


@dataclass(frozen=True)
class Inputs:
    """What import-seg reads: a predictions folder with ``images`` (and ``gt``), or a ``manifest``."""

    preds: Path | None = None
    """Folder of predicted masks (nnU-Net or ACDC names)."""
    images: Path | None = None
    """Folder of the images the masks were predicted from."""
    gt: Path | None = None
    """Folder of ground-truth masks (optional)."""
    manifest: Path | None = None
    """CSV with columns image, prediction, optional gt, case, patient, phase, frame, group, model."""
    provenance: Provenance | None = None
    """Stored in the file; None: made here, without a command line."""


@dataclass
class Result:
    """What import-seg wrote: rows, patients, cases, models, where phases came from, notes."""

    path: Path
    rows: int = 0
    patients: int = 0
    cases: int = 0
    models: list[str] = field(default_factory=list)
    phase_from: dict[str, int] = field(default_factory=dict)
    label_map: str = ""
    notes: list[str] = field(default_factory=list)


def find_cases(config: ImportSegConfig, inputs: Inputs) -> tuple[list[Case], list[str]]:
    """The cases to import (sorted by key) and notes on what was skipped.

    Raises:
        ConfigError: neither (predictions and images) nor a manifest, or both.
        InputMissingError, BadInputError: see :func:`acdctool.io.layouts.pair_folders`.
    """
    if inputs.manifest is not None:
        if inputs.preds is not None or inputs.images is not None or inputs.gt is not None:
            raise ConfigError("give either PRED_DIR with --images (and --gt), or --manifest")
        return read_manifest(inputs.manifest, config.model), []
    if inputs.preds is None or inputs.images is None:
        raise ConfigError("give PRED_DIR and --images IMAGES_DIR (or --manifest CSV)")
    return pair_folders(
        inputs.preds, inputs.images, inputs.gt, default_model=config.model, allow_missing=config.allow_missing
    )


def run(
    config: ImportSegConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Import predicted NIfTI masks into a ``seg`` slice file (written atomically).

    Args:
        config: crop rule, size, normalisation, label maps, model name.
        inputs: folders or manifest (and provenance).
        output: output ``.h5`` path.
        force: replace an existing ``output``.
        progress: one event per patient (unit ``patients``).

    Raises:
        ConfigError: inconsistent inputs. InputMissingError: a folder or file is missing.
        BadInputError: a prediction without its image (or the reverse), shape/affine mismatch,
            labels outside the label map, not 3D, a dataset.json that does not map to RV/MYO/LV,
            ground truth for some cases only (each naming the file; nothing is written).
        OutputError: ``output`` exists (without ``force``) or cannot be written.

    Example:
        >>> inputs = Inputs(Path("nnunet_out"), images=Path("imagesTs"))
        >>> run(ImportSegConfig(), inputs, Path("seg.h5")).rows  # doctest: +SKIP
        742
    """
    cases, notes = find_cases(config, inputs)
    pred_dir = inputs.preds if inputs.preds is not None else Path(inputs.manifest or ".").parent
    pred_map, pred_src = label_map_from(config.labels, [pred_dir, pred_dir.parent])
    with_gt = [c for c in cases if c.gt is not None]
    if with_gt and len(with_gt) != len(cases):
        lacking = next(c for c in cases if c.gt is None)
        raise BadInputError(f"{lacking.image}: no ground truth while other cases have it; import them separately")
    gt_map = dict(IDENTITY)
    if with_gt:
        gt_dir = inputs.gt if inputs.gt is not None else with_gt[0].gt.parent  # type: ignore[union-attr]
        gt_map, _ = label_map_from(config.gt_labels, [gt_dir, gt_dir.parent])
    unknown = [c for c in cases if not c.phase]
    lv = {c.key: lv_volume_ml(c, pred_map, gt_map) for c in unknown}
    assign_phases(cases, lv)
    patients: dict[str, list[Case]] = {}
    for case in cases:
        patients.setdefault(case.patient, []).append(case)
    result = Result(
        Path(output),
        cases=len(cases),
        models=sorted({m for c in cases for m in c.preds}),
        phase_from=dict(Counter(c.phase_from for c in cases)),
        label_map=pred_src,
        notes=notes,
    )
    tracker = Tracker(progress, len(patients), "patients")
    arrays = {"image": ("float32", ()), "gt": ("uint8", ()), "pred": ("uint8", ())}
    if not with_gt:
        del arrays["gt"]

    def work(name: str) -> tuple[list, dict, bool]:
        loaded: list[LoadedCase] = [load_case(c, pred_map, gt_map) for c in patients[name]]
        return patient_rows(loaded, config, pred_map, gt_map)

    sources = [p for p in (inputs.preds, inputs.images, inputs.gt, inputs.manifest) if p is not None]
    attrs = {"import": {"label_map": pred_src, "phase_from": result.phase_from, "layout": _layout(inputs)}}
    with SliceWriter(
        output,
        kind="seg",
        config=config_to_dict(config),
        provenance=make_provenance(sources) if inputs.provenance is None else inputs.provenance,
        shape=(config.size, config.size),
        arrays=arrays,
        force=force,
        attrs=attrs,
        columns=SOURCE_COLUMNS,
        inputs=sources,
    ) as writer:
        fallbacks = []
        for name, outcome in ordered_map(work, sorted(patients), workers=config.workers):
            if isinstance(outcome, AcdcToolError):
                raise outcome
            rows, data, fell_back = outcome
            writer.append(rows, **data)
            result.rows += len(rows)
            result.patients += 1
            if fell_back:
                fallbacks.append(name)
            tracker.advance()
    if fallbacks:
        result.notes.append(
            f"empty predictions: centre crop for {len(fallbacks)} patients ({', '.join(fallbacks[:5])})"
        )
    return result


def _layout(inputs: Inputs) -> str:
    return "manifest" if inputs.manifest is not None else "folders"
