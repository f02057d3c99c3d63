"""``prep``: an ACDC folder → an HDF5 slice file (kind ``prep``), streamed patient by patient.

Per patient (:func:`acdctool.data.prep.patient_rows`): ED and ES frames cut into 2D slices,
a square crop around the heart, resized with the pixel spacing tracked, intensities normalised;
patient-level stratified split and folds (:func:`acdctool.data.splits.assign_splits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from acdctool.config import PrepConfig, Roi, config_to_dict
from acdctool.data.prep import ground_truth_present, ordered_map, patient_rows
from acdctool.data.splits import assign_splits
from acdctool.errors import AcdcToolError, BadInputError
from acdctool.io.acdc import PatientInfo, find_patients, read_info
from acdctool.io.slices import SliceWriter
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance


@dataclass(frozen=True)
class Inputs:
    """What prep reads."""

    acdc_dir: Path
    """ACDC root (with ``training/``, ``testing/``), a folder of patient folders, or one patient."""
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
    patients = find_patients(root)
    tracker = Tracker(progress, len(patients), "patients")
    infos: dict[str, PatientInfo] = {}
    result = Result(Path(output))
    for p in patients:
        try:
            infos[p.name] = read_info(p.path)
        except AcdcToolError as exc:
            if not config.skip_bad:
                raise
            result.skipped.append((p.name, str(exc)))
    usable = [p for p in patients if p.name in infos]
    has_gt = ground_truth_present(usable, infos)
    if config.roi == Roi.GT.value and not has_gt:
        raise BadInputError(f"{root}: no ground-truth masks (*_gt.nii.gz); use --roi center for data without masks")
    splits = assign_splits(
        [(p.name, infos[p.name].group, p.source) for p in usable], config.val_fraction, config.folds, config.seed
    )
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
        inputs=[p.path for p in patients],  # the output may not replace anything a patient folder holds
    ) as writer:
        work = lambda p: patient_rows(p, infos[p.name], splits[p.name], config, has_gt)  # noqa: E731
        for p, outcome in ordered_map(work, usable, workers=config.workers):
            if isinstance(outcome, AcdcToolError):
                if not config.skip_bad:
                    raise outcome
                result.skipped.append((p.name, str(outcome)))
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
