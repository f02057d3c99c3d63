"""Reading ACDC folders: ``Info.cfg``, frame NIfTI files, and the true voxel spacing.

ACDC headers carry sform_code 2 with a *unit-scale* affine (diag −1, −1, 1) and qform_code 0;
the true spacing lives only in pixdim. ``img.affine`` therefore says 1 mm per voxel, which
gives wrong volumes and distances. This module reads spacing from ``header.get_zooms()`` only.

Array axes are kept as stored: a frame is (X, Y, Z); a 2D slice is ``volume[:, :, z]`` whose
rows run along X (spacing ``zooms[0]``) and columns along Y (``zooms[1]``).
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acdctool.conventions import GROUPS
from acdctool.errors import BadInputError, InputMissingError

_PATIENT_RE = re.compile(r"^patient\d{3}$")
_REQUIRED_INFO = ("ED", "ES", "Group", "NbFrame")


@dataclass(frozen=True)
class PatientRef:
    """A patient folder and where it came from (``training`` or ``testing``)."""

    name: str
    path: Path
    source: str


@dataclass(frozen=True)
class PatientInfo:
    """Parsed ``Info.cfg``. Frames are 1-based as in the file names."""

    ed: int
    es: int
    group: str
    nb_frames: int
    height: float | None = None
    weight: float | None = None


@dataclass(frozen=True)
class Frame:
    """One cine frame: image (X, Y, Z) float32, mask (X, Y, Z) uint8 or None, spacing mm."""

    image: np.ndarray
    mask: np.ndarray | None
    spacing: tuple[float, float, float]
    """(row mm, col mm, slice spacing mm) from pixdim."""
    image_path: Path


def find_patients(root: Path) -> list[PatientRef]:
    """List patient folders under an ACDC root, a ``training``/``testing`` folder, or one patient.

    Raises:
        InputMissingError: ``root`` does not exist.
        BadInputError: ``root`` holds no ``patientNNN`` folder.
    """
    root = Path(root)
    if not root.exists():
        raise InputMissingError(f"{root}: no such folder")
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder (expected an ACDC folder)")
    if _PATIENT_RE.match(root.name):
        return [PatientRef(root.name, root, "testing" if root.parent.name == "testing" else "training")]
    found: list[PatientRef] = []
    subsets = [d for d in (root / "training", root / "testing") if d.is_dir()]
    if subsets:
        for sub in subsets:
            found += [PatientRef(p.name, p, sub.name) for p in _patient_dirs(sub)]
    else:
        source = "testing" if root.name == "testing" else "training"
        found = [PatientRef(p.name, p, source) for p in _patient_dirs(root)]
    if not found:
        raise BadInputError(
            f"{root}: no patientNNN folders found (expected an ACDC root with training/ or "
            "testing/, or a folder of patient folders)"
        )
    names = [p.name for p in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInputError(f"{root}: patient names appear twice: {', '.join(dupes)}")
    return found


def _patient_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT_RE.match(p.name))


def read_info(patient_dir: Path) -> PatientInfo:
    """Parse ``patient_dir/Info.cfg`` (``key: value`` lines).

    Raises:
        InputMissingError: no Info.cfg.
        BadInputError: unreadable, a required key missing, or a value of the wrong type.
    """
    path = Path(patient_dir) / "Info.cfg"
    if not path.is_file():
        raise InputMissingError(f"{path}: missing Info.cfg")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: unreadable Info.cfg ({exc})") from None
    fields: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise BadInputError(f"{path}:{lineno}: malformed line {line.strip()!r} (expected 'Key: value')")
        fields[key.strip()] = value.strip()
    missing = [k for k in _REQUIRED_INFO if k not in fields]
    if missing:
        raise BadInputError(f"{path}: malformed Info.cfg, missing {', '.join(missing)}")
    try:
        info = PatientInfo(
            ed=int(fields["ED"]),
            es=int(fields["ES"]),
            group=fields["Group"],
            nb_frames=int(fields["NbFrame"]),
            height=float(fields["Height"]) if "Height" in fields else None,
            weight=float(fields["Weight"]) if "Weight" in fields else None,
        )
    except ValueError as exc:
        raise BadInputError(f"{path}: malformed Info.cfg ({exc})") from None
    if info.group not in GROUPS:
        raise BadInputError(f"{path}: unknown Group {info.group!r} (expected one of {', '.join(GROUPS)})")
    for key, frame in (("ED", info.ed), ("ES", info.es)):
        if not 1 <= frame <= info.nb_frames:
            raise BadInputError(f"{path}: {key} frame {frame} outside 1..NbFrame={info.nb_frames}")
    return info


def frame_paths(patient: PatientRef, frame: int) -> tuple[Path, Path]:
    """(image path, ground-truth path) of a 1-based frame, named as in ACDC."""
    stem = patient.path / f"{patient.name}_frame{frame:02d}"
    return stem.with_name(stem.name + ".nii.gz"), stem.with_name(stem.name + "_gt.nii.gz")


def load_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], object]:
    """Load a NIfTI file: (array in its stored dtype, zooms from pixdim in mm, header).

    Raises:
        InputMissingError: no such file.
        BadInputError: truncated, not gzip, or not NIfTI; a spatial pixdim that is 0,
            negative or not finite (nibabel would silently replace it by 1 mm).
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"{path}: missing file")
    try:
        _check_pixdim(path)
        img = nib.load(str(path))
        if not isinstance(img, nib.spatialimages.SpatialImage):  # e.g. a CIFTI or MINC container
            raise BadInputError(f"{path}: not a NIfTI image ({type(img).__name__})")
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise BadInputError(
            f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc}; truncated or not .nii.gz?)"
        ) from None
    zooms = tuple(float(z) for z in img.header.get_zooms())
    return data, zooms, img.header


def _check_pixdim(path: Path) -> None:
    """Refuse a NIfTI-1 header whose voxel sizes are 0, negative or not finite, as stored.

    nibabel "fixes" a zero pixdim to 1 on load (with a log line), which would make every mm
    and mL wrong without an error, so the raw header is read first.
    """
    import nibabel as nib
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as fh:
        block = fh.read(348)
    if len(block) < 348:
        return  # too short for a header: nib.load reports it
    size_le, size_be = int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")
    if 348 not in (size_le, size_be):
        return  # not NIfTI-1 (e.g. NIfTI-2): nib.load checks it
    header = nib.Nifti1Header(binaryblock=block, check=False)
    ndim = int(header["dim"][0])
    spatial = np.asarray(header["pixdim"][1 : 1 + max(1, min(ndim, 3))], dtype=np.float64)
    if not (np.isfinite(spatial).all() and (spatial > 0).all()):
        raise BadInputError(
            f"{path}: voxel size {tuple(float(v) for v in spatial)} mm in pixdim is zero, negative or not "
            "finite; the spacing is unknown (fix the header)"
        )


def load_frame(patient: PatientRef, frame: int, with_mask: bool = True) -> Frame:
    """Load one frame's image and (if present and asked for) its ground-truth mask.

    Raises:
        InputMissingError: the image file is missing.
        BadInputError: unreadable file, not 3D, image/mask shapes differ, labels outside 0..3,
            or a non-positive spacing.
    """
    image_path, mask_path = frame_paths(patient, frame)
    image, zooms, _ = load_nifti(image_path)
    if image.ndim != 3:
        raise BadInputError(f"{image_path}: expected a 3D volume, got shape {image.shape}")
    spacing = (zooms[0], zooms[1], zooms[2])
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise BadInputError(f"{image_path}: invalid voxel spacing {spacing} in pixdim")
    mask = None
    if with_mask and mask_path.exists():
        raw, _, _ = load_nifti(mask_path)
        if raw.shape != image.shape:
            raise BadInputError(f"{mask_path}: mask shape {raw.shape} differs from image shape {image.shape}")
        if np.issubdtype(raw.dtype, np.floating) and not np.all(raw == np.round(raw)):
            raise BadInputError(f"{mask_path}: non-integer labels in mask")
        lo, hi = raw.min(), raw.max()
        if lo < 0 or hi > 3:
            bad = sorted(set(np.unique(raw).tolist()) - {0, 1, 2, 3})
            raise BadInputError(f"{mask_path}: labels outside 0..3: {bad[:5]}")
        mask = raw.astype(np.uint8, copy=False)
    return Frame(image.astype(np.float32, copy=False), mask, spacing, image_path)
