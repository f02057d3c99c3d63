"""``prep``: an ACDC folder → an HDF5 slice file (kind ``prep``), streamed patient by patient.

Per patient (:func:`acdctool.data.prep.patient_rows`): ED and ES frames cut into 2D slices,
a square crop around the heart, resized with the pixel spacing tracked, intensities normalised;
patient-level stratified split and folds (:func:`acdctool.data.splits.assign_splits`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.config import PrepConfig, Roi, config_to_dict
from acdctool.data.imported import SOURCE_COLUMNS
from acdctool.data.nnunet import load_frames, set_phases, with_sources
from acdctool.data.prep import frames_rows, ground_truth_present, ordered_map, patient_rows
from acdctool.data.splits import assign_splits
from acdctool.errors import AcdcToolError, BadInputError
from acdctool.io.acdc import PatientInfo, PatientRef, find_patients, read_info
from acdctool.io.labelmap import label_map_from
from acdctool.io.layouts import Case, is_nnunet_raw, read_raw_dataset
from acdctool.io.slices import SliceWriter
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance


@dataclass(frozen=True)
class Inputs:
    """What prep reads."""

    acdc_dir: Path
    """ACDC root (with ``training/``, ``testing/``), a folder of patient folders, one patient, or
    an nnU-Net raw dataset (``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``dataset.json``;
    :mod:`acdctool.data.nnunet`) or one of its ``images*`` folders."""
    provenance: Provenance | None = None
    """Stored in the file; None: made here, without a command line."""


@dataclass
class Result:
    """What prep wrote: output path, row and patient counts, patients skipped and why."""

    path: Path
    rows: int = 0
    patients: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def run(
    config: PrepConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Convert an ACDC folder into a slice file (kind ``prep``), written atomically.

    Args:
        config: crop, resize, normalisation and split settings.
        inputs: the ACDC folder (and provenance).
        output: output ``.h5`` path.
        force: replace an existing ``output``.
        progress: one event per patient processed (unit ``patients``).

    Raises:
        InputMissingError: the folder or a file it needs is missing.
        BadInputError: malformed Info.cfg or NIfTI, shape mismatch, labels outside 0..3, no
            ground truth with ``roi="gt"``, NaN/inf inside the crop (with
            ``nonfinite="error"``), each naming the file; with ``skip_bad`` these
            skip the patient instead, unless every patient fails.
        OutputError: ``output`` exists (without ``force``), lies in (or is) a patient folder
            and exists, or cannot be written.

    Example:
        >>> run(PrepConfig(folds=5), Inputs(Path("ACDC/training")), Path("slices.h5"))  # doctest: +SKIP
    """
    root = Path(inputs.acdc_dir)
    result = Result(Path(output))
    if is_nnunet_raw(root):
        units, has_gt, total = _raw_units(root, config, result)
    else:
        units, has_gt, total = _acdc_units(root, config, result)
    if config.roi in (Roi.GT.value, Roi.HEART.value) and not has_gt:
        raise BadInputError(
            f"{root}: no ground-truth masks (*_gt.nii.gz, labelsTr/) to place --roi {config.roi}; use --roi center "
            "for data without masks"
        )
    tracker = Tracker(progress, total, "patients")
    arrays = {"image": ("float32", ())}
    if has_gt:
        arrays["gt"] = ("uint8", ())
    with SliceWriter(
        output,
        kind="prep",
        config=config_to_dict(config),
        provenance=make_provenance([root]) if inputs.provenance is None else inputs.provenance,
        shape=(config.size, config.size),
        arrays=arrays,
        force=force,
        columns=SOURCE_COLUMNS if is_nnunet_raw(root) else None,
        inputs=_read_paths(root),  # the output may not replace anything prep reads
    ) as writer:
        for (name, _), outcome in ordered_map(lambda u: u[1](), units, workers=config.workers):
            if isinstance(outcome, AcdcToolError):
                if not config.skip_bad:
                    raise outcome
                result.skipped.append((name, str(outcome)))
            else:
                rows, images, masks = outcome
                data = {"image": images, "gt": masks} if has_gt else {"image": images}
                writer.append(rows, **data)
                result.rows += len(rows)
                result.patients += 1
            tracker.advance()
        if result.patients == 0:
            raise BadInputError(f"{root}: every patient failed; first error: {result.skipped[0][1]}")
    return result


def _read_paths(root: Path) -> list[Path]:
    """The folders whose files prep reads: each patient folder, or an nnU-Net dataset's subsets."""
    if not is_nnunet_raw(root):
        return [p.path for p in find_patients(root)]
    if root.name.startswith("images"):  # one image folder of a dataset (and its labels beside it)
        return [root, root.with_name(root.name.replace("images", "labels", 1))]
    return [root / "dataset.json", *(root / d for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"))]


Unit = tuple[str, Callable[[], tuple[list[dict[str, Any]], np.ndarray, np.ndarray | None]]]
"""A patient's name and the call that makes its rows, images and masks."""


def _acdc_units(root: Path, config: PrepConfig, result: Result) -> tuple[list[Unit], bool, int]:
    """ACDC layout: patients with Info.cfg (those with a bad one skipped with ``skip_bad``)."""
    patients = find_patients(root)
    infos: dict[str, PatientInfo] = {}
    for p in patients:
        try:
            infos[p.name] = read_info(p.path)
        except AcdcToolError as exc:
            if not config.skip_bad:
                raise
            result.skipped.append((p.name, str(exc)))
    usable = [p for p in patients if p.name in infos]
    has_gt = ground_truth_present(usable, infos)
    splits = assign_splits(
        [(p.name, infos[p.name].group, p.source) for p in usable], config.val_fraction, config.folds, config.seed
    )

    def unit(p: PatientRef) -> Unit:
        return p.name, lambda: patient_rows(p, infos[p.name], splits[p.name], config, has_gt)

    return [unit(p) for p in usable], has_gt, len(patients)


def _raw_units(root: Path, config: PrepConfig, result: Result) -> tuple[list[Unit], bool, int]:
    """nnU-Net raw layout: imagesTr/labelsTr (+ imagesTs), labels mapped through dataset.json.

    A test subset without labels beside a training subset with labels is left out (listed in
    ``result.skipped``): prep ``ROOT/imagesTs`` on its own for it.
    """
    subsets, dataset_json, _ = read_raw_dataset(root)
    mapping, _ = label_map_from(None if dataset_json is None else str(dataset_json), [])
    labelled = [any(c.gt is not None for c in cases) for _, cases in subsets]
    if any(labelled) and not all(labelled):
        for (source, cases), has in zip(subsets, labelled, strict=True):
            if not has:
                result.skipped.append((f"{source} ({len(cases)} cases)", "no labels; prep its images folder alone"))
        subsets = [s for s, has in zip(subsets, labelled, strict=True) if has]
    has_gt = any(labelled)
    units: list[Unit] = []
    patients: dict[str, tuple[str, list[Case]]] = {}
    for source, cases in subsets:
        set_phases(cases, mapping)
        for case in cases:
            patients.setdefault(case.patient, (source, []))[1].append(case)
    splits = assign_splits(
        [(name, "", source) for name, (source, _) in patients.items()], config.val_fraction, config.folds, config.seed
    )

    def unit(name: str, cases: list[Case]) -> Unit:
        def rows() -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray | None]:
            frames = load_frames(cases, mapping, has_gt)
            out = frames_rows(name, cases[0].group, frames, splits[name], config, cases[0].image or root)
            return with_sources(out[0], cases, mapping), out[1], out[2]

        return name, rows

    units = [unit(name, cases) for name, (_, cases) in sorted(patients.items())]
    return units, has_gt, len(units)
