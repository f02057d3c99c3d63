"""Finding images, predictions and ground truth in folders of NIfTI files, or in a CSV manifest.

File names (``.nii.gz`` or ``.nii``; in a folder's subfolders, such as ACDC patient folders,
when it holds none itself) give each file a **case key**:

==================================  ==============================  ===============================
layout                              image                           mask (prediction or ground truth)
==================================  ==============================  ===============================
nnU-Net                             ``CASE_0000.nii.gz``            ``CASE.nii.gz``
ACDC                                ``patientNNN_frameYY.nii.gz``   ``patientNNN_frameYY_SUFFIX.nii.gz``
                                                                    (``_gt``: ground truth; ``_pred``
                                                                    or a model name: a prediction), or
                                                                    the image's name in another folder
other                               ``CASE.nii.gz``                 ``CASE.nii.gz`` in another folder
==================================  ==============================  ===============================

The key is ``CASE`` or ``patientNNN_frameYY``. ACDC-like keys (also inside nnU-Net names, e.g.
``patient001_frame01_0000.nii.gz``) give the patient and the frame; any other case is a patient
of its own. In an ACDC patient folder, ``Info.cfg`` gives the group and the ED/ES phase of a
frame. ``patientNNN_4d.nii.gz`` cines are left out of 3D searches.

A CSV manifest lists cases explicitly (:func:`read_manifest`).

Example:
    >>> parse_name(Path("patient001_frame01_0000.nii.gz"))
    NiftiName(key='patient001_frame01', suffix=None, channel=0)
    >>> parse_name(Path("patient001_frame12_unet.nii.gz"))
    NiftiName(key='patient001_frame12', suffix='unet', channel=None)
    >>> acdc_parts("patient001_frame12"), acdc_parts("case_007")
    (('patient001', 12), None)
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from acdctool.conventions import GROUPS, PHASES
from acdctool.errors import BadInputError, InputMissingError
from acdctool.io.acdc import read_info

_ACDC = re.compile(r"^(patient\d{3})_frame(\d{2})(?:_(.+))?$")
_CINE = re.compile(r"^patient\d{3}_4d$")
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")
GT_SUFFIX = "gt"
PRED_SUFFIX = "pred"


class NiftiName(NamedTuple):
    """What a NIfTI file name says: its case key, ACDC suffix and nnU-Net channel."""

    key: str
    suffix: str | None
    channel: int | None


@dataclass
class Case:
    """One 3D volume to read: its image, predictions (model → file) and ground truth."""

    key: str
    image: Path | None
    preds: dict[str, Path] = field(default_factory=dict)
    gt: Path | None = None
    patient: str = ""
    frame: int | None = None
    phase: str | None = None
    """``ED``/``ES`` when Info.cfg or the manifest says so; else decided later (:mod:`acdctool.data.phases`)."""
    phase_from: str = ""
    """``info`` (Info.cfg), ``manifest``, or set later (``lv-volume``, ``frame-order``)."""
    group: str = ""


def is_nifti(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.endswith((".nii.gz", ".nii"))


def stem(path: Path) -> str:
    """File name without ``.nii.gz`` / ``.nii``."""
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def parse_name(path: Path) -> NiftiName:
    """Case key, ACDC suffix (``gt``, ``pred``, a model name) and nnU-Net channel of a file name."""
    name = stem(path)
    channel = _CHANNEL.match(name)
    if channel:
        return NiftiName(channel.group(1), None, int(channel.group(2)))
    acdc = _ACDC.match(name)
    if acdc:
        return NiftiName(f"{acdc.group(1)}_frame{acdc.group(2)}", acdc.group(3), None)
    return NiftiName(name, None, None)


def acdc_parts(key: str) -> tuple[str, int] | None:
    """(patient, frame) of an ACDC-like key, else None."""
    m = _ACDC.match(key)
    return (m.group(1), int(m.group(2))) if m and m.group(3) is None else None


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files of ``folder`` (sorted, hidden ones left out); those of its subfolders
    (recursively, e.g. ACDC patient folders) only when it holds none itself.

    Raises:
        InputMissingError: no such folder. BadInputError: not a folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputMissingError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder of NIfTI files")
    own = sorted(p for p in folder.glob("*.nii*") if is_nifti(p))
    if own:
        return own
    rel = lambda p: p.relative_to(folder).parts  # noqa: E731
    return sorted(p for p in folder.rglob("*.nii*") if is_nifti(p) and not any(s.startswith(".") for s in rel(p)))


def _unique(found: dict[str, Path], key: str, path: Path, what: str) -> None:
    if key in found:
        raise BadInputError(f"{path}: a second {what} for case {key} (also {found[key]})")
    found[key] = path


def find_images(folder: Path, *, cines: bool = False) -> dict[str, Path]:
    """Images under ``folder``: case key → file.

    nnU-Net images (``_0000``), ACDC frames without suffix, and other names without a channel.
    ``patientNNN_4d`` cines are included only with ``cines``.

    Raises:
        InputMissingError, BadInputError: no folder; a channel other than 0000 (one channel
            expected); two images for one case.
    """
    found: dict[str, Path] = {}
    for path in nifti_files(folder):
        name = parse_name(path)
        if name.channel is not None and name.channel != 0:
            raise BadInputError(f"{path}: channel {name.channel:04d}; acdctool reads one channel (CASE_0000)")
        if name.suffix is not None or (_CINE.match(name.key) and not cines):
            continue
        _unique(found, name.key, path, "image")
    return found


def find_masks(folder: Path, role: str, default_model: str = PRED_SUFFIX) -> dict[str, dict[str, Path]]:
    """Masks under ``folder``: case key → {model name → file}.

    ``role="gt"``: the ``_gt`` files when the folder has any (an ACDC folder), else the files
    without a suffix or channel (an nnU-Net ``labelsTr``); the model name is ``gt``.
    ``role="pred"``: files with a suffix (model = the suffix; ``_pred``/``_gt`` give
    ``default_model``), and files without one where the case has no suffixed file (model
    ``default_model``); the unsuffixed file of a case that also has suffixed ones is its image.

    Raises:
        InputMissingError, BadInputError: no folder; two files for one case and model.
    """
    plain: dict[str, Path] = {}
    suffixed: dict[str, dict[str, Path]] = {}
    for path in nifti_files(folder):
        name = parse_name(path)
        if name.channel is not None or _CINE.match(name.key):
            continue
        if name.suffix is None:
            _unique(plain, name.key, path, "file")
        else:
            model = default_model if role == "pred" and name.suffix in (GT_SUFFIX, PRED_SUFFIX) else name.suffix
            _unique(suffixed.setdefault(name.key, {}), model, path, f"'{name.suffix}' mask")
    if role == "gt":
        with_gt = {k: {"gt": v[GT_SUFFIX]} for k, v in suffixed.items() if GT_SUFFIX in v}
        return with_gt if with_gt else {k: {"gt": p} for k, p in plain.items()}
    out = {k: dict(v) for k, v in suffixed.items()}
    for key, path in plain.items():
        out.setdefault(key, {default_model: path})
    return dict(sorted(out.items()))


def add_info(case: Case) -> None:
    """Fill group and phase from the ``Info.cfg`` beside an ACDC-like case's image or ground truth.

    A malformed Info.cfg is an error; a missing one leaves the case unchanged.

    Raises:
        BadInputError: unreadable or malformed Info.cfg.
    """
    parts = acdc_parts(case.key)
    if parts is None:
        return
    for path in (case.image, case.gt):
        if path is None or not (path.parent / "Info.cfg").is_file():
            continue
        try:
            info = read_info(path.parent)
        except InputMissingError:
            continue
        case.group = case.group or info.group
        phase = {info.ed: PHASES[0], info.es: PHASES[1]}.get(parts[1])
        if case.phase is None and phase is not None:
            case.phase, case.phase_from = phase, "info"
        return


def pair_folders(
    pred_dir: Path,
    image_dir: Path | None,
    gt_dir: Path | None,
    *,
    default_model: str = PRED_SUFFIX,
    allow_missing: bool = False,
) -> tuple[list[Case], list[str]]:
    """Cases from a prediction folder, matched by key with images and (optional) ground truth.

    Args:
        pred_dir: the predictions.
        image_dir: the images (None: no images, e.g. for ``eval`` on folders).
        gt_dir: the ground truth (None: none).
        default_model: model name of predictions without a model suffix.
        allow_missing: skip images that have no prediction (listed in the second return
            value) instead of failing.

    Returns:
        (cases sorted by key, notes about what was left out).

    Raises:
        InputMissingError, BadInputError: a prediction without its image or ground truth, an
            image without a prediction (unless ``allow_missing``), a prediction that is its own
            image, no prediction at all (each naming the file or folder).
    """
    preds = find_masks(pred_dir, "pred", default_model)
    if not preds:
        raise BadInputError(f"{pred_dir}: no prediction (.nii.gz) found")
    images = find_images(image_dir) if image_dir is not None else {}
    gts = {k: v["gt"] for k, v in find_masks(gt_dir, "gt").items()} if gt_dir is not None else {}
    notes: list[str] = []
    if image_dir is not None:
        lacking = [k for k in images if k not in preds]
        if lacking and not allow_missing:
            k = lacking[0]
            raise BadInputError(
                f"{images[k]}: image without a prediction (no {k}.nii.gz or {k}_*.nii.gz in {pred_dir}; "
                f"{len(lacking)} such images); --allow-missing skips them"
            )
        if lacking:
            notes.append(f"skipped {len(lacking)} images without a prediction ({', '.join(lacking[:5])} ...)")
    cases = []
    for key, models in preds.items():
        first = next(iter(models.values()))
        image = images.get(key)
        if image_dir is not None and image is None:
            raise BadInputError(
                f"{first}: prediction without its image ({key}_0000.nii.gz or {key}.nii.gz in {image_dir})"
            )
        if gt_dir is not None and key not in gts:
            raise BadInputError(f"{first}: prediction without ground truth ({key} in {gt_dir})")
        for path in models.values():
            if image is not None and path.resolve() == image.resolve():
                raise BadInputError(f"{path}: the prediction is the image itself; give the predictions' folder")
        case = Case(key, image, dict(models), gts.get(key))
        case.patient, case.frame = acdc_parts(key) or (key, None)
        add_info(case)
        cases.append(case)
    return cases, notes


MANIFEST_COLUMNS = ("image", "prediction", "gt", "case", "patient", "phase", "frame", "group", "model")
"""Columns a manifest may have; ``image`` and ``prediction`` (or ``pred``) are required."""


def read_manifest(path: Path, default_model: str = PRED_SUFFIX) -> list[Case]:
    """Cases listed in a CSV manifest: one row per image and prediction.

    Columns: ``image``, ``prediction`` (or ``pred``), optional ``gt``, ``case`` (default: the
    prediction's key), ``patient`` (default: from an ACDC-like key, else the case), ``phase``
    (ED/ES), ``frame``, ``group``, ``model``. Relative paths are relative to the manifest.

    Raises:
        InputMissingError: the manifest or a file it names does not exist.
        BadInputError: a required column or cell is empty, a phase is not ED/ES, a group is
            unknown, a case repeats (each naming the manifest line).
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"{path}: no such manifest")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: unreadable CSV ({exc})") from None
    if not rows:
        raise BadInputError(f"{path}: empty manifest")
    pred_col = "prediction" if "prediction" in header else "pred"
    missing = [c for c in ("image", pred_col) if c not in header]
    if missing:
        raise BadInputError(f"{path}: manifest lacks column(s) {', '.join(missing)} (has {', '.join(header)})")
    cases: dict[str, Case] = {}
    for lineno, raw in enumerate(rows, 2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path}:{lineno}"
        for col, what in (("image", "image"), (pred_col, "prediction")):
            if not row.get(col):
                raise BadInputError(f"{where}: no {what} given")
        files = {c: _resolve(path, row[c], where) for c in ("image", pred_col, "gt") if row.get(c)}
        key = row.get("case") or parse_name(files[pred_col]).key
        model = row.get("model") or default_model
        case = cases.get(key) or Case(key, files["image"], {}, files.get("gt"))
        if model in case.preds:
            raise BadInputError(f"{where}: case {key} model {model} listed twice")
        case.preds[model] = files[pred_col]
        acdc = acdc_parts(key)
        case.patient = row.get("patient") or (acdc[0] if acdc else key)
        frame = row.get("frame")
        try:
            case.frame = int(frame) if frame else (acdc[1] if acdc else None)
        except ValueError:
            raise BadInputError(f"{where}: frame {frame!r} is not a number") from None
        phase = row.get("phase", "").upper()
        if phase:
            if phase not in PHASES:
                raise BadInputError(f"{where}: phase {row['phase']!r} (expected ED or ES)")
            case.phase, case.phase_from = phase, "manifest"
        group = row.get("group", "")
        if group and group not in GROUPS:
            raise BadInputError(f"{where}: unknown group {group!r} (expected one of {', '.join(GROUPS)})")
        case.group = group
        cases[key] = case
    for case in cases.values():
        add_info(case)
    return [cases[k] for k in sorted(cases)]


def _resolve(manifest: Path, value: str, where: str) -> Path:
    p = Path(value)
    p = p if p.is_absolute() else (manifest.parent / p)
    if not p.is_file():
        raise InputMissingError(f"{where}: {value}: no such file")
    return p


def is_nnunet_raw(root: Path) -> bool:
    """Whether ``root`` is an nnU-Net raw dataset (``imagesTr/``, ``imagesTs/``) or one of its image folders."""
    root = Path(root)
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        return True
    return (
        root.is_dir()
        and root.name.startswith("images")
        and any(parse_name(p).channel == 0 for p in root.glob("*.nii*"))
    )


def read_raw_dataset(root: Path) -> tuple[list[tuple[str, list[Case]]], Path | None, list[str]]:
    """The cases of an nnU-Net raw dataset, per subset.

    ``imagesTr`` (with ``labelsTr``) gives ``training`` cases, ``imagesTs`` (with ``labelsTs``
    when present) ``testing`` cases; ``root`` may also be one ``images*`` folder. Cases with
    ACDC-like names are grouped into patients; others are patients of their own.

    Returns:
        ([(source, cases)], the dataset.json (None when absent), notes).

    Raises:
        InputMissingError, BadInputError: a label without its image or the reverse, a second
            channel, two files for one case (naming the file).
    """
    root = Path(root)
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        folders = [
            (root / f"images{s}", root / f"labels{s}", src) for s, src in (("Tr", "training"), ("Ts", "testing"))
        ]
        dataset = root / "dataset.json"
    else:
        sibling = root.parent / root.name.replace("images", "labels", 1)
        folders = [(root, sibling, "testing" if root.name.endswith("Ts") else "training")]
        dataset = root.parent / "dataset.json"
    subsets: list[tuple[str, list[Case]]] = []
    for images_dir, labels_dir, source in folders:
        if not images_dir.is_dir():
            continue
        images = find_images(images_dir)
        labels = {k: v["gt"] for k, v in find_masks(labels_dir, "gt").items()} if labels_dir.is_dir() else {}
        if labels_dir.is_dir():
            for key, path in labels.items():
                if key not in images:
                    raise BadInputError(f"{path}: label without its image ({key}_0000.nii.gz in {images_dir})")
            for key, path in images.items():
                if key not in labels:
                    raise BadInputError(f"{path}: image without its label ({key}.nii.gz in {labels_dir})")
        cases = []
        for key, path in images.items():
            case = Case(key, path, gt=labels.get(key))
            case.patient, case.frame = acdc_parts(key) or (key, None)
            cases.append(case)
        subsets.append((source, cases))
    if not subsets or not any(cases for _, cases in subsets):
        raise BadInputError(f"{root}: no images (imagesTr/CASE_0000.nii.gz) in this nnU-Net dataset")
    return subsets, (dataset if dataset.is_file() else None), []
