"""Synthetic cine-MRI phantoms in the exact ACDC layout (written by :mod:`acdctool.stages.synth`).

Each patient is a short-axis stack of a beating heart: bright LV blood pool, dark myocardial
ring, bright RV crescent on the septal side, textured surroundings, Rician noise and a bias
field. Pathology groups change sizes, wall thickness and contraction (see
:data:`acdctool.data.phantom_shapes.GROUP_RANGES`), so ejection fractions resemble ACDC's.
The ground truth is anatomically plausible like ACDC's: ~98-99% of slices pass the 16 criteria
of :mod:`acdctool.metrics.anatomy` after ``prep`` (real ACDC: 97.8%); the failures are the open
basal rings (LVOT) of ~10% of patients, on their most basal LV slice only.

The files reproduce the real ACDC header trap (SPEC §4): sform_code 2 with a unit-scale affine
diag(-1, -1, 1, 1), qform_code 0, and the true voxel size only in pixdim
(``header.get_zooms()``). Code that reads ``img.affine`` gets 1 mm voxels, as with real data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from acdctool.config import SynthConfig
from acdctool.conventions import GROUPS
from acdctool.data.phantom_shapes import build_model
from acdctool.errors import ConfigError

UNIT_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
"""The affine stored in every ACDC file (and ours): unit scale, whatever the true spacing."""


@dataclass(frozen=True)
class Phantom:
    """One synthetic patient, in memory.

    Attributes:
        number: patient number (``patient001`` is 1).
        group: pathology group, one of ``GROUPS``.
        ed, es: end-diastolic and end-systolic frame numbers, 1-based as in ``Info.cfg``.
        n_frames: frames per cycle (``NbFrame``).
        spacing: true voxel size (x, y, z) in mm.
        images: frame number (1-based) -> int16 image (X, Y, Z). Always holds ED and ES; holds
            every frame 1..n_frames when built with ``all_frames=True``.
        masks: ``{ed: ..., es: ...}`` uint8 label maps (X, Y, Z): 0 bg, 1 RV, 2 MYO, 3 LV.
        info: ``Info.cfg`` fields in file order (ED, ES, Group, Height, NbFrame, Weight).
    """

    number: int
    group: str
    ed: int
    es: int
    n_frames: int
    spacing: tuple[float, float, float]
    images: Mapping[int, np.ndarray]
    masks: Mapping[int, np.ndarray]
    info: Mapping[str, object]

    @property
    def name(self) -> str:
        return f"patient{self.number:03d}"

    @property
    def image(self) -> np.ndarray:
        """The cine as one int16 array (X, Y, Z, T), T = ``n_frames``.

        Raises:
            ValueError: the phantom was built without ``all_frames``.
        """
        missing = [f for f in range(1, self.n_frames + 1) if f not in self.images]
        if missing:
            raise ValueError(f"{self.name}: frames {missing} were not rendered (use all_frames=True)")
        return np.stack([self.images[f] for f in range(1, self.n_frames + 1)], axis=-1)


def group_of(number: int) -> str:
    """Group of a patient number: cycles through ``GROUPS`` from patient001 (NOR), so a patient
    number always names the same phantom and any 5 consecutive patients are balanced."""
    return GROUPS[(number - 1) % len(GROUPS)]


def contraction(frame: int, es: int, n_frames: int) -> float:
    """Contraction state (0 = ED, 1 = ES) of a 1-based frame on a cosine cycle: systole from
    frame 1 to ``es``, then relaxation back towards ED at frame ``n_frames + 1``."""
    if frame <= es:
        return float(0.5 * (1 - np.cos(np.pi * (frame - 1) / (es - 1))))
    return float(0.5 * (1 + np.cos(np.pi * (frame - es) / (n_frames + 1 - es))))


def make_patient(number: int, group: str, config: SynthConfig, *, all_frames: bool | None = None) -> Phantom:
    """Build one phantom in memory (nothing is written).

    Args:
        number: patient number; with ``config.seed`` it seeds everything random.
        group: one of ``GROUPS``.
        config: only ``seed`` and ``frames`` are used here.
        all_frames: render every cine frame, not just ED and ES (default ``config.write_4d``).

    Every frame's noise has its own generator, so ED/ES arrays do not depend on ``all_frames``.

    Raises:
        ConfigError: ``group`` is not one of ``GROUPS``.
    """
    if group not in GROUPS:
        raise ConfigError(f"unknown group {group!r}; expected one of {GROUPS}")
    all_frames = config.write_4d if all_frames is None else all_frames
    rng = np.random.default_rng([config.seed, number])
    model = build_model(rng, group)
    n_frames = config.frames
    es = int(np.clip(round(0.4 * n_frames) + int(rng.integers(-1, 2)), 2, n_frames - 1))
    height = float(np.clip(round(rng.normal(172, 9)), 148, 200))
    weight = float(round(rng.uniform(19.0, 33.0) * (height / 100) ** 2))  # BMI 19-33

    frames = range(1, n_frames + 1) if all_frames else (1, es)
    images: dict[int, np.ndarray] = {}
    masks: dict[int, np.ndarray] = {}
    for f in frames:
        frame_rng = np.random.default_rng([config.seed, number, f])
        img, labels = model.render(contraction(f, es, n_frames), frame_rng)
        images[f] = np.clip(np.rint(img), 0, np.iinfo(np.int16).max).astype(np.int16)
        if f in (1, es):
            masks[f] = labels
    info = {"ED": 1, "ES": es, "Group": group, "Height": height, "NbFrame": n_frames, "Weight": weight}
    return Phantom(number, group, 1, es, n_frames, model.spacing, images, masks, info)


def info_cfg_text(info: Mapping[str, object]) -> str:
    """``Info.cfg`` content exactly as in ACDC: ``Key: value`` lines, floats with one decimal."""
    lines = []
    for key in ("ED", "ES", "Group", "Height", "NbFrame", "Weight"):
        value = info[key]
        lines.append(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    return "\n".join(lines) + "\n"


def save_acdc_nifti(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    """Write ``array`` (X, Y, Z[, T]) with an ACDC-style header.

    The header is built by hand and the image gets no affine, because nibabel's
    ``update_header`` would otherwise rewrite pixdim from the unit affine on save.
    """
    header = nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    header.set_data_shape(array.shape)
    header.set_qform(UNIT_AFFINE, code=0)
    header.set_sform(UNIT_AFFINE, code=2)
    zooms = tuple(float(s) for s in spacing) + (1.0,) * (array.ndim - len(spacing))
    header.set_zooms(zooms[: array.ndim])
    nib.Nifti1Image(array, None, header=header).to_filename(str(path))


def write_patient(phantom: Phantom, folder: Path, *, write_4d: bool = False) -> None:
    """Write one phantom into ``folder`` (created) with ACDC file names."""
    folder.mkdir(parents=True, exist_ok=False)
    name = phantom.name
    (folder / "Info.cfg").write_text(info_cfg_text(phantom.info), encoding="ascii")
    for f in (phantom.ed, phantom.es):
        stem = folder / f"{name}_frame{f:02d}"
        save_acdc_nifti(phantom.images[f], phantom.spacing, stem.with_name(stem.name + ".nii.gz"))
        save_acdc_nifti(phantom.masks[f], phantom.spacing, stem.with_name(stem.name + "_gt.nii.gz"))
    if write_4d:
        save_acdc_nifti(phantom.image, phantom.spacing, folder / f"{name}_4d.nii.gz")
