"""The 16 anatomical criteria of Painchaud et al. (TMI 2020) for a short-axis slice.

Each criterion is defined once, in :data:`CRITERIA` (name, unit, pass rule, measure); the
registry generates the public function of the same name, ``f(mask, spacing) -> float`` on a
label map ``(H, W)`` (0 background, 1 RV, 2 MYO, 3 LV) with ``spacing = (row_mm, col_mm)``,
e.g. :func:`holes_in_lv`; the measures themselves are in :mod:`acdctool.metrics.shapes`.
Counts are in pixels (px), distances in mm, circularity is dimensionless. A criterion passes
when its value is 0, or within its threshold for the concavities (≤ 4 mm LV, ≤ 30 mm RV,
≤ 0 mm MYO) and circularities (≥ 0.2); NaN means the structure is absent, which passes. A
slice is valid when all 16 pass, so an empty slice is valid.

The definitions follow the reference code of the paper (vitalab/vital, ACDC anatomical
metrics) so that validity rates are comparable with the literature, including its tolerances:

- *Holes between regions* (LV–MYO, RV–MYO) are ignored up to ``H·W / 2**14`` pixels in total
  (1 px at 128², 4 px at 256²); the image size is that of the mask passed in.
- *Frontiers* (LV–RV, LV–background) are ignored when only 1 pixel touches.
- *Concavity* is the depth of the deepest convexity defect: convex hull of the filled
  structure (pixels as diamonds, hull pixels = centres inside or on the hull) minus the
  structure, eroded by a 3×3 square (so a 1–2 px wide sliver along the contour does not
  count), then the largest Euclidean distance (mm) from a remaining pixel to the outside of the
  hull. For the MYO the filled structure is the epicardial disc, and "≤ 0 mm" means no defect
  survives the erosion: blocky (nearest-neighbour upsampled) edges can make it fail.
- *Circularity* ``4πA/P²`` uses pixel units (area in px, perimeter as
  ``skimage.measure.perimeter(neighborhood=4)`` of the filled structure), as the reference does;
  in-plane spacing is isotropic in ACDC.
- Holes in a structure are regions of other labels it encloses (background 8-connected);
  components are 8-connected. Regions touching the image border are never holes.

Where we depart from the reference code:

- "Outside" is whatever touches the image border, not the region holding pixel (0, 0); only
  degenerate masks (a structure on that pixel) see a difference.
- ``holes_in_myo`` counts the pixels the MYO encloses that are not LV. The reference subtracts
  the area of the *first* LV component from the MYO's enclosed area, so the two differ whenever
  the LV is fragmented (about 5.7% of ordinary UNet slices, not only degenerate masks). Slice
  validity is unaffected there: a fragmented LV already fails ``disconnectivity_in_lv``.

Example:
    >>> mask = np.zeros((32, 32), np.uint8)
    >>> yy, xx = np.mgrid[:32, :32]; r2 = (yy - 16) ** 2 + (xx - 16) ** 2
    >>> mask[r2 < 100] = 2; mask[r2 < 36] = 3
    >>> is_valid(mask, (1.5, 1.5))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from acdctool.conventions import BACKGROUND as BG
from acdctool.conventions import LABEL_OF
from acdctool.errors import BadInputError
from acdctool.metrics.overlap import check_label_map, check_spacings
from acdctool.metrics.shapes import (
    PreparedSlice,
    circularity,
    concavity,
    disconnected,
    frontier,
    holes_between,
    holes_in,
    myo_holes,
    rv_myo_gap,
)

__all__ = [
    "Criterion",
    "CRITERIA",
    "CRITERIA_NAMES",
    "evaluate_slice",
    "failed_criteria",
    "is_valid",
    "evaluate_batch",
    "criteria_passed",
    # + the 16 generated criterion functions, named as CRITERIA_NAMES (added below)
]

RV, MYO, LV = LABEL_OF["rv"], LABEL_OF["myo"], LABEL_OF["lv"]
CriterionFunction = Callable[[np.ndarray, Sequence[float]], float]
_RULES = {"zero": "0", "max": "≤ {threshold:g} {unit}", "min": "≥ {threshold:g}"}


@dataclass(frozen=True)
class Criterion:
    """One anatomical criterion: what it measures and when it passes.

    Attributes:
        name: column name, as in the reference code, and the name of the generated function.
        unit: ``"px"``, ``"mm"`` or ``"1"`` (dimensionless).
        measure: prepared slice → value (a measure of :mod:`acdctool.metrics.shapes`).
        what: what the value is, one sentence (the generated function's docstring).
        rule: ``"zero"`` (value must be 0), ``"max"`` (≤ threshold) or ``"min"`` (≥ threshold).
        threshold: bound for ``"max"``/``"min"`` rules.
        func: the generated public function ``func(mask, spacing) -> value``.
    """

    name: str
    unit: str
    measure: Callable[[PreparedSlice], float] = field(repr=False, compare=False)
    what: str = field(repr=False, compare=False)
    rule: str = "zero"
    threshold: float = 0.0
    func: CriterionFunction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rule not in _RULES:
            raise ValueError(f"{self.name}: rule must be one of {sorted(_RULES)}, got {self.rule!r}")
        object.__setattr__(self, "func", _public_function(self))

    @property
    def valid_when(self) -> str:
        """The pass rule in words, e.g. ``"0"``, ``"≤ 4 mm"``, ``"≥ 0.2"``."""
        return _RULES[self.rule].format(threshold=self.threshold, unit=self.unit)

    def passes(self, value: float) -> bool:
        """Whether ``value`` is valid; NaN (absent structure) passes."""
        return bool(_passed(np.asarray([value], float), self.rule, self.threshold)[0])


def _public_function(c: Criterion) -> CriterionFunction:
    def criterion(mask: np.ndarray, spacing: Sequence[float]) -> float:
        return c.measure(PreparedSlice(mask, spacing))

    criterion.__name__ = criterion.__qualname__ = c.name
    criterion.__module__ = __name__
    criterion.__doc__ = (
        f"{c.what} Valid: {c.valid_when}.\n\n"
        "Args:\n    mask: label map ``(H, W)``, values in 0..3.\n    spacing: ``(row_mm, col_mm)``.\n\n"
        "Raises:\n    BadInputError: not 2D, non-integer, labels outside 0..3, or bad spacing.\n"
    )
    return criterion


def _passed(values: np.ndarray, rule: str, threshold: float) -> np.ndarray:
    if rule == "zero":
        ok = values == 0
    elif rule == "max":
        ok = values <= threshold
    else:
        ok = values >= threshold
    return ok | np.isnan(values)


CRITERIA: tuple[Criterion, ...] = (
    Criterion("holes_in_lv", "px", lambda s: holes_in(s, LV), "Pixels (px) of other labels enclosed by the LV."),
    Criterion("holes_in_rv", "px", lambda s: holes_in(s, RV), "Pixels (px) of other labels enclosed by the RV."),
    Criterion(
        "holes_in_myo", "px", myo_holes, "Pixels (px) enclosed by the MYO that are not LV (the LV cavity is no hole)."
    ),
    Criterion(
        "disconnectivity_in_lv",
        "px",
        lambda s: disconnected(s, LV),
        "LV pixels (px) outside its largest 8-connected component.",
    ),
    Criterion(
        "disconnectivity_in_rv",
        "px",
        lambda s: disconnected(s, RV),
        "RV pixels (px) outside its largest 8-connected component.",
    ),
    Criterion(
        "disconnectivity_in_myo",
        "px",
        lambda s: disconnected(s, MYO),
        "MYO pixels (px) outside its largest 8-connected component.",
    ),
    Criterion(
        "holes_between_lv_and_myo",
        "px",
        lambda s: holes_between(s, LV, MYO),
        "Pixels (px) enclosed between LV and MYO but in neither, 0 up to ``H·W/2**14`` px (holes of one "
        "structure that do not contain the other are filled first: they count as holes in it).",
    ),
    Criterion(
        "holes_between_rv_and_myo",
        "px",
        lambda s: holes_between(s, RV, MYO),
        "Pixels (px) enclosed between RV and MYO but in neither, 0 up to ``H·W/2**14`` px.",
    ),
    Criterion(
        "rv_disconnected_from_myo",
        "mm",
        rv_myo_gap,
        "Gap (mm) between RV and MYO: 0 when they touch (8-adjacency) or one is absent, otherwise the "
        "smallest distance from a pixel next to the RV to a MYO pixel.",
    ),
    Criterion(
        "frontier_between_lv_and_rv",
        "px",
        lambda s: frontier(s, LV, RV),
        "LV pixels (px) 8-adjacent to the RV, 0 when only one touches.",
    ),
    Criterion(
        "frontier_between_lv_and_background",
        "px",
        lambda s: frontier(s, LV, BG),
        "LV pixels (px) 8-adjacent to background, 0 when only one touches.",
    ),
    Criterion(
        "lv_concavity",
        "mm",
        lambda s: concavity(s, LV),
        "Depth (mm) of the deepest convexity defect of the filled LV; NaN if absent.",
        "max",
        4.0,
    ),
    Criterion(
        "rv_concavity",
        "mm",
        lambda s: concavity(s, RV),
        "Depth (mm) of the deepest convexity defect of the filled RV; NaN if absent.",
        "max",
        30.0,
    ),
    Criterion(
        "myo_concavity",
        "mm",
        lambda s: concavity(s, MYO),
        "Depth (mm) of the deepest convexity defect of the filled MYO (epicardium); NaN if absent. "
        "0 mm means no defect survives a 3×3 erosion.",
        "max",
        0.0,
    ),
    Criterion(
        "lv_circularity",
        "1",
        lambda s: circularity(s, LV),
        "Isoperimetric ratio 4πA/P² (px units) of the filled LV; NaN if absent.",
        "min",
        0.2,
    ),
    Criterion(
        "myo_circularity",
        "1",
        lambda s: circularity(s, MYO),
        "Isoperimetric ratio 4πA/P² (px units) of the filled MYO; NaN if absent.",
        "min",
        0.2,
    ),
)
"""The 16 criteria in the reference order (columns of :func:`evaluate_batch`)."""

CRITERIA_NAMES: tuple[str, ...] = tuple(c.name for c in CRITERIA)

# The public per-criterion functions (holes_in_lv(mask, spacing), ...), generated from the registry.
globals().update({c.name: c.func for c in CRITERIA})
__all__ += CRITERIA_NAMES

# An empty slice: no structure, nothing to measure (0 for counts and gaps, NaN for shapes).
_EMPTY = tuple(c.measure(PreparedSlice(np.zeros((1, 1), np.uint8), (1.0, 1.0), checked=True)) for c in CRITERIA)


def _evaluate(s: PreparedSlice) -> list[float]:
    if not s.counts[1:].any():
        return list(_EMPTY)
    return [c.measure(s) for c in CRITERIA]


def evaluate_slice(mask: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All 16 criteria for one slice.

    Args:
        mask: label map ``(H, W)``, values in 0..3.
        spacing: ``(row_mm, col_mm)``.

    Returns:
        ``{name: value}`` in :data:`CRITERIA` order (px, mm or dimensionless; NaN = absent).

    Raises:
        BadInputError: not 2D, non-integer, labels outside 0..3, or bad spacing.
    """
    return dict(zip(CRITERIA_NAMES, _evaluate(PreparedSlice(mask, spacing)), strict=True))


def failed_criteria(values: Mapping[str, float]) -> list[str]:
    """Names of the criteria whose value fails, in :data:`CRITERIA` order.

    Raises:
        BadInputError: a criterion is missing from ``values``.
    """
    missing = [c.name for c in CRITERIA if c.name not in values]
    if missing:
        raise BadInputError(f"criteria values missing: {', '.join(missing)}")
    return [c.name for c in CRITERIA if not c.passes(values[c.name])]


def is_valid(mask: np.ndarray, spacing: Sequence[float]) -> bool:
    """Whether a slice passes all 16 criteria (an empty slice does)."""
    return not failed_criteria(evaluate_slice(mask, spacing))


def criteria_passed(values: np.ndarray) -> np.ndarray:
    """Pass/fail per criterion for values ``(N, 16)`` from :func:`evaluate_batch`: bool ``(N, 16)``."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(CRITERIA):
        raise BadInputError(f"values: expected shape (N, {len(CRITERIA)}), got {values.shape}")
    return np.stack([_passed(values[:, j], c.rule, c.threshold) for j, c in enumerate(CRITERIA)], axis=1)


def evaluate_batch(masks: np.ndarray, spacings: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All 16 criteria for a stack of slices.

    Args:
        masks: label maps ``(N, H, W)``, values in 0..3.
        spacings: ``(N, 2)`` per-slice ``(row_mm, col_mm)``, or one ``(2,)`` pair for all.

    Returns:
        ``(values, valid)``: float64 ``(N, 16)`` in :data:`CRITERIA_NAMES` order, and bool ``(N,)``.

    Raises:
        BadInputError: wrong shapes, labels outside 0..3, or bad spacings.

    Example:
        >>> values, valid = evaluate_batch(np.zeros((2, 64, 64), np.uint8), (1.0, 1.0))
        >>> valid.tolist()
        [True, True]
    """
    masks = check_label_map(masks, 3, "masks")
    n = masks.shape[0]
    sp = check_spacings(spacings, n)
    values = np.empty((n, len(CRITERIA)))
    for i in range(n):
        values[i] = _evaluate(PreparedSlice(masks[i], sp[i], checked=True))
    return values, np.asarray(criteria_passed(values).all(axis=1))
