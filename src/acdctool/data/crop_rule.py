"""Crop rules: where the square crop goes, in training (``prep``) and at inference (``predict``).

A net trained on 128² crops only works on crops made the same way, so the rule is a named
preprocessing setting stored with every model (:func:`preprocessing_of`, in the checkpoint's
``data["prep"]``), and ``predict`` refuses a model whose rule it cannot reproduce.

==========  ==========================================================  =====================
``--roi``   training (``prep``)                                         inference (``predict``)
==========  ==========================================================  =====================
``gt``      box around the ground-truth heart, side = extent·(1+2·      impossible: needs the
            margin) (the report's crop; tightest, best Dice)            ground truth; refused
``center``  ``roi_mm`` square at the image centre                       the same
``heart``   ``roi_mm`` square centred on the ground-truth heart         the same square centred
                                                                        on the *predicted* heart
==========  ==========================================================  =====================

``heart`` at inference is a two-pass search (:func:`acdctool.models.inference.segment_patient`):
pass 1 segments the ``roi_mm`` square at the image centre; each further pass re-centres the
square on the predicted heart (the largest connected component of the foreground, over all
slices and frames) until it stops moving. The scale (mm per pixel) is the same in every pass
and the same as in training, only the position changes, so one model serves both passes. On
real ACDC the heart lies partly outside a centred 200 mm square in 11 of 100 patients (centre
offsets up to 102 mm), which ``center`` cannot recover and ``heart`` can.

Example:
    >>> heart = np.zeros((100, 100), bool); heart[10:30, 60:90] = True
    >>> margin_box(heart, 0.25)
    CropBox(r0=-2, c0=52, size=45)
    >>> heart_centred_box(heart, (2.0, 2.0), 80.0)
    CropBox(r0=0, c0=55, size=40)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from acdctool.errors import BadInputError

MIN_CROP_PX = 16
"""Smallest crop side: a tiny stray-pixel mask must not become a 2-pixel crop."""

GT_FREE = ("center", "heart")
"""Rules that ``predict`` can reproduce without ground truth."""


@dataclass(frozen=True)
class CropBox:
    """Square crop in original pixels: rows [r0, r0+size), cols [c0, c0+size); may overhang."""

    r0: int
    c0: int
    size: int


def _bounds(heart: np.ndarray) -> tuple[int, int, int, int]:
    r_idx, c_idx = np.nonzero(heart.any(axis=1))[0], np.nonzero(heart.any(axis=0))[0]
    return int(r_idx[0]), int(r_idx[-1]) + 1, int(c_idx[0]), int(c_idx[-1]) + 1


def margin_box(heart: np.ndarray, margin: float) -> CropBox:
    """Square box centred on the bounding box of ``heart`` (2D bool, not empty), side = its
    larger extent × (1 + 2·margin) px (at least :data:`MIN_CROP_PX`): ``prep --roi gt``."""
    r_lo, r_hi, c_lo, c_hi = _bounds(heart)
    side = max(MIN_CROP_PX, int(math.ceil(max(r_hi - r_lo, c_hi - c_lo) * (1 + 2 * margin))))
    return CropBox(int(round((r_lo + r_hi - side) / 2)), int(round((c_lo + c_hi - side) / 2)), side)


def square_side(spacing: Sequence[float], roi_mm: float) -> int:
    """Side (px) of a ``roi_mm`` square on a grid of in-plane ``spacing`` (row mm, col mm)."""
    return max(MIN_CROP_PX, int(round(roi_mm / min(float(spacing[0]), float(spacing[1])))))


def centre_box(shape: tuple[int, int], spacing: Sequence[float], roi_mm: float) -> CropBox:
    """The ``roi_mm`` square at the centre of an image of in-plane ``shape`` (``--roi center``)."""
    side = square_side(spacing, roi_mm)
    return CropBox(int(round((shape[0] - side) / 2)), int(round((shape[1] - side) / 2)), side)


def largest_component(heart: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D bool mask (the mask itself when empty)."""
    from scipy import ndimage

    labels, n = ndimage.label(heart, structure=np.ones((3, 3), bool))
    if n <= 1:
        return heart.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def heart_centred_box(heart: np.ndarray, spacing: Sequence[float], roi_mm: float) -> CropBox:
    """The ``roi_mm`` square centred on the bounding box of the largest component of ``heart``
    (2D bool, not empty): ``--roi heart``, on the ground truth in prep and on a prediction in predict."""
    r_lo, r_hi, c_lo, c_hi = _bounds(largest_component(heart))
    side = square_side(spacing, roi_mm)
    return CropBox(int(round((r_lo + r_hi - side) / 2)), int(round((c_lo + c_hi - side) / 2)), side)


@dataclass(frozen=True)
class CropRule:
    """The preprocessing a model was trained with: crop rule, output size, normalisation.

    Made from a prep config (:meth:`from_prep_config`) and stored in checkpoints as a dict.
    """

    roi: str
    roi_mm: float
    margin: float
    size: int
    mask_interp: str
    low_percentile: float
    high_percentile: float

    @classmethod
    def from_prep_config(cls, config: Mapping[str, Any]) -> CropRule:
        """From a stored ``PrepConfig`` dict (``SliceFile.config`` of a prep file).

        Raises:
            BadInputError: a key is missing (not a prep config).
        """
        try:
            return cls(**{k: config[k] for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise BadInputError(f"preprocessing settings lack {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def name(self) -> str:
        """How help and errors name the rule, e.g. ``heart (200 mm square) → 128 px``."""
        where = (
            f"{self.roi} (margin {self.margin:g})" if self.roi == "gt" else f"{self.roi} ({self.roi_mm:g} mm square)"
        )
        return f"{where} → {self.size} px"

    @property
    def gt_free(self) -> bool:
        return self.roi in GT_FREE


def preprocessing_of(kind: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The preprocessing a training stage stores with its model (``data["prep"]``).

    Args:
        kind: the training file's kind; only ``prep`` files say how they were cropped.
        config: the training file's stored config.

    Returns:
        :meth:`CropRule.as_dict`, or None when the file does not record it (e.g. a gen-seg file).
    """
    if kind != "prep":
        return None
    try:
        return CropRule.from_prep_config(config).as_dict()
    except BadInputError:
        return None
