"""The 16 anatomical criteria of Painchaud et al. (TMI 2020) for a short-axis slice.

Each criterion is one function ``f(mask, spacing) -> float`` on a label map ``(H, W)``
(0 background, 1 RV, 2 MYO, 3 LV) with ``spacing = (row_mm, col_mm)``. Counts are in pixels
(px), distances in mm, circularity is dimensionless. A criterion passes when its value is 0,
or within its threshold for the concavities (≤ 4 mm LV, ≤ 30 mm RV, ≤ 0 mm MYO) and
circularities (≥ 0.2); NaN means the structure is absent, which passes. A slice is valid when
all 16 pass, so an empty slice is valid.

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

Where we depart from the reference code (only degenerate masks are affected): "outside" is
whatever touches the image border, not the region holding pixel (0, 0); MYO holes subtract the
LV pixels inside them rather than the area of the first LV component.

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
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage.measure import perimeter

from acdctool.errors import BadInputError
from acdctool.metrics.overlap import check_label_map, check_spacing, check_spacings

__all__ = [
    "Criterion",
    "CRITERIA",
    "CRITERIA_NAMES",
    "evaluate_slice",
    "failed_criteria",
    "is_valid",
    "evaluate_batch",
    "criteria_passed",
    *(
        "holes_in_lv holes_in_rv holes_in_myo disconnectivity_in_lv disconnectivity_in_rv "
        "disconnectivity_in_myo holes_between_lv_and_myo holes_between_rv_and_myo "
        "rv_disconnected_from_myo frontier_between_lv_and_rv frontier_between_lv_and_background "
        "lv_concavity rv_concavity myo_concavity lv_circularity myo_circularity"
    ).split(),
]

BG, RV, MYO, LV = 0, 1, 2, 3
_OUTSIDE = 255  # crop pixels beyond the image: neither background nor any structure
_CROSS = ndimage.generate_binary_structure(2, 1)
_SQUARE = np.ones((3, 3), dtype=bool)
_EPS = 1e-9


class _Slice:
    """One slice cropped to its foreground plus a 1-pixel ring, with cached binary maps.

    Every criterion reads this instead of the full mask so that ``evaluate_slice`` crops and
    labels each structure once, however many criteria use it.
    """

    def __init__(self, mask: np.ndarray, spacing: Sequence[float], checked: bool = False):
        if not checked:
            mask = check_label_map(mask, 2)
            spacing = check_spacing(spacing, 2)
        self.spacing = tuple(float(s) for s in spacing)
        h, w = mask.shape
        self.tolerance = h * w / 2**14
        self.counts = np.bincount(mask.ravel(), minlength=4)
        self._cache: dict[tuple, np.ndarray] = {}
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            self.crop = np.zeros((3, 3), np.uint8)
            self.outside = None
            return
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = np.full((r1 - r0 + 2, c1 - c0 + 2), _OUTSIDE, np.uint8)
        # The ring is real background where the image goes on, _OUTSIDE where it ends.
        sr0, sr1, sc0, sc1 = max(r0 - 1, 0), min(r1 + 1, h), max(c0 - 1, 0), min(c1 + 1, w)
        crop[sr0 - r0 + 1 : sr1 - r0 + 1, sc0 - c0 + 1 : sc1 - c0 + 1] = mask[sr0:sr1, sc0:sc1]
        self.crop = crop
        touches = r0 == 0 or c0 == 0 or r1 == h or c1 == w
        self.outside = crop == _OUTSIDE if touches else None

    def present(self, label: int) -> bool:
        return bool(self.counts[label])

    def struct(self, label: int) -> np.ndarray:
        key = ("s", label)
        if key not in self._cache:
            self._cache[key] = self.crop == label
        return self._cache[key]

    def box(self, label: int) -> tuple[slice, slice]:
        """Bounding box of a present structure plus one pixel: always inside the crop."""
        key = ("b", label)
        if key not in self._cache:
            self._cache[key] = _bbox_ring(self.struct(label))
        return self._cache[key]

    def holes(self, label: int, connectivity: int) -> np.ndarray:
        """Pixels enclosed by a present ``label``: complement components not reaching the box edge.

        Computed in the structure's box, whose 1-pixel edge is never the structure and is
        4-connected, hence one component, linked to the image border outside the box.
        """
        key = ("h", label, connectivity)
        if key not in self._cache:
            out = np.zeros(self.crop.shape, bool)
            # 8-connected background leaks more, so its holes are a subset of the 4-connected ones.
            if connectivity == 4 or self.holes(label, 4).any():
                box = self.box(label)
                lab, n = ndimage.label(~self.struct(label)[box], _SQUARE if connectivity == 8 else _CROSS)
                if n > 1:
                    out[box] = (lab != lab[0, 0]) & (lab > 0)
            self._cache[key] = out
        return self._cache[key]

    def filled(self, label: int) -> np.ndarray:
        """The structure with its holes filled (background 4-connected, as binary_fill_holes)."""
        return self.struct(label) | self.holes(label, 4)


def _count(a: np.ndarray) -> float:
    return float(np.count_nonzero(a))


def _bbox_ring(a: np.ndarray) -> tuple[slice, slice]:
    # Bounding box of a non-empty structure plus one pixel, always inside the crop.
    rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
    return slice(rows[0] - 1, rows[-1] + 2), slice(cols[0] - 1, cols[-1] + 2)


def _convex_hull(a: np.ndarray) -> np.ndarray:
    """Convex hull image of a non-empty binary mask, as ``skimage.morphology.convex_hull_image``.

    Each pixel is a diamond of radius 1/2 (its edge midpoints); a pixel belongs to the hull when
    its centre is inside or on the hull of the diamonds. Only the diamonds of the leftmost and
    rightmost pixel of each row can give hull vertices, and of their top/bottom corners only
    those that stick out past the next row's extreme pixel (by 2+ columns), so qhull sees ~2
    points per row. The hull is then rasterised row by row from its half-planes. Coordinates
    are doubled so that every vertex is an integer until qhull.
    """
    h, w = a.shape
    rows = np.flatnonzero(a.any(axis=1))
    sub = a[rows]
    lft = sub.argmax(axis=1)
    rgt = (w - 1) - sub[:, ::-1].argmax(axis=1)
    nxt = np.zeros(rows.size, bool)  # the next row holds pixels too
    nxt[:-1] = np.diff(rows) == 1
    prv = np.zeros(rows.size, bool)
    prv[1:] = nxt[:-1]
    keep_lb, keep_lt, keep_rb, keep_rt = ~nxt, ~prv, ~nxt, ~prv
    keep_lb[:-1] |= lft[1:] > lft[:-1] + 1
    keep_lt[1:] |= lft[:-1] > lft[1:] + 1
    keep_rb[:-1] |= rgt[1:] < rgt[:-1] - 1
    keep_rt[1:] |= rgt[:-1] < rgt[1:] - 1
    r2 = 2 * rows
    pr = np.concatenate([r2, r2, r2[keep_lb] + 1, r2[keep_lt] - 1, r2[keep_rb] + 1, r2[keep_rt] - 1])
    pc = np.concatenate(
        [2 * lft - 1, 2 * rgt + 1, 2 * lft[keep_lb], 2 * lft[keep_lt], 2 * rgt[keep_rb], 2 * rgt[keep_rt]]
    )
    stride = 2 * w + 4
    key = np.unique((pr + 2) * stride + (pc + 2))  # qhull can trip over repeated points
    pts = np.empty((key.size, 2))
    pts[:, 0], pts[:, 1] = np.divmod(key, stride)
    eq = ConvexHull(pts - 2.0).equations  # a*row2 + b*col2 + d <= 0 inside
    a_, b_, d_ = eq[:, 0:1], eq[:, 1], eq[:, 2:3]
    rhs = (_EPS - d_) - a_ * (2.0 * np.arange(h))  # 2b*col <= rhs, per half-plane and row
    pos, neg = b_ > _EPS, b_ < -_EPS
    hi = (rhs[pos] / (2.0 * b_[pos, None])).min(axis=0)
    lo = (rhs[neg] / (2.0 * b_[neg, None])).max(axis=0)
    flat = ~(pos | neg)
    if flat.any():  # horizontal edges bound the rows
        hi[(rhs[flat] < 0).any(axis=0)] = -np.inf
    cols = np.arange(w)
    return (cols >= lo[:, None]) & (cols <= hi[:, None])


# --- the criteria, on a prepared slice -------------------------------------------------------


def _holes_in(s: _Slice, label: int) -> float:
    return _count(s.holes(label, 8)) if s.present(label) else 0.0


def _holes_in_myo(s: _Slice) -> float:
    if not s.present(MYO):
        return 0.0
    # The LV is supposed to fill the MYO ring: only what else the ring encloses is a hole.
    return _count(s.holes(MYO, 8) & ~s.struct(LV))


def _disconnectivity(s: _Slice, label: int) -> float:
    if not s.present(label):
        return 0.0
    lab, n = ndimage.label(s.struct(label)[s.box(label)], _SQUARE)
    if n <= 1:
        return 0.0
    sizes = np.bincount(lab.ravel())[1:]
    return float(sizes.sum() - sizes.max())


def _holes_without(holes: np.ndarray, other: np.ndarray) -> np.ndarray:
    # Holes of one structure that do not contain the other one (those get filled in).
    if not holes.any():
        return holes
    lab, _ = ndimage.label(holes, _CROSS)
    hit = np.unique(lab[other])
    return holes & ~np.isin(lab, hit[hit > 0])


def _holes_between(s: _Slice, a: int, b: int) -> float:
    if not (s.present(a) and s.present(b)):
        return 0.0  # nothing can be enclosed between a structure and nothing
    sa, sb = s.struct(a), s.struct(b)
    union = sa | sb | _holes_without(s.holes(a, 4), sb) | _holes_without(s.holes(b, 4), sa)
    lab, n = ndimage.label(~union, _CROSS)
    gap = _count((lab != lab[0, 0]) & (lab > 0)) if n > 1 else 0.0
    return gap if gap > s.tolerance else 0.0


def _rv_disconnected_from_myo(s: _Slice) -> float:
    if not (s.present(RV) and s.present(MYO)):
        return 0.0
    rv = ndimage.binary_dilation(s.struct(RV), _SQUARE)
    if s.outside is not None:
        rv &= ~s.outside
    myo = s.struct(MYO)
    if (rv & myo).any():
        return 0.0
    return float(ndimage.distance_transform_edt(~myo, sampling=s.spacing)[rv].min())


def _frontier(s: _Slice, a: int, b: int) -> float:
    if not (s.present(a) and s.present(b)):
        return 0.0
    box = s.box(a)  # pixels of b outside it cannot touch a
    touching = _count(s.struct(a)[box] & ndimage.binary_dilation(s.struct(b)[box], _SQUARE))
    return touching if touching > 1 else 0.0


def _concavity(s: _Slice, label: int) -> float:
    if not s.present(label):
        return float("nan")
    box = s.box(label)  # holes lie inside the structure's bounding box
    filled = s.filled(label)[box]
    hull = _convex_hull(filled)
    defect = hull & ~filled
    if not defect.any():
        return 0.0
    outside = s.outside[box] if s.outside is not None else None
    if outside is not None:
        defect = defect | outside  # beyond the image nothing erodes the defect
    core = ndimage.binary_erosion(defect, _SQUARE, border_value=1) & hull
    if not core.any():
        return 0.0
    # Depth is the distance to the nearest in-image pixel outside the hull; only when the hull
    # covers the whole image (a structure wrapped around it) is the image edge used instead.
    inside_hull = hull | outside if outside is not None else hull
    if inside_hull.all():
        inside_hull = hull
    return float(ndimage.distance_transform_edt(inside_hull, sampling=s.spacing)[core].max())


def _circularity(s: _Slice, label: int) -> float:
    if not s.present(label):
        return float("nan")
    filled = s.filled(label)[s.box(label)]
    perim = perimeter(filled, 4)
    if perim < 1e-6:
        return float("nan")  # a single pixel has no measurable perimeter
    return float(4.0 * np.pi * np.count_nonzero(filled) / perim**2)


# --- public criterion functions ----------------------------------------------------------------


def holes_in_lv(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Pixels (px) of other labels enclosed by the LV. Valid: 0."""
    return _holes_in(_Slice(mask, spacing), LV)


def holes_in_rv(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Pixels (px) of other labels enclosed by the RV. Valid: 0."""
    return _holes_in(_Slice(mask, spacing), RV)


def holes_in_myo(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Pixels (px) enclosed by the MYO that are not LV (the LV cavity is no hole). Valid: 0."""
    return _holes_in_myo(_Slice(mask, spacing))


def disconnectivity_in_lv(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """LV pixels (px) outside its largest 8-connected component. Valid: 0."""
    return _disconnectivity(_Slice(mask, spacing), LV)


def disconnectivity_in_rv(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """RV pixels (px) outside its largest 8-connected component. Valid: 0."""
    return _disconnectivity(_Slice(mask, spacing), RV)


def disconnectivity_in_myo(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """MYO pixels (px) outside its largest 8-connected component. Valid: 0."""
    return _disconnectivity(_Slice(mask, spacing), MYO)


def holes_between_lv_and_myo(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Pixels (px) enclosed between LV and MYO but in neither, 0 up to ``H·W/2**14`` px.

    Holes of one structure that do not contain the other are filled first (they count as holes
    in that structure instead). Valid: 0.
    """
    return _holes_between(_Slice(mask, spacing), LV, MYO)


def holes_between_rv_and_myo(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Pixels (px) enclosed between RV and MYO but in neither, 0 up to ``H·W/2**14`` px. Valid: 0."""
    return _holes_between(_Slice(mask, spacing), RV, MYO)


def rv_disconnected_from_myo(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Gap (mm) between RV and MYO: 0 when they touch (8-adjacency) or one is absent.

    Otherwise the smallest distance from a pixel next to the RV to a MYO pixel. Valid: 0.
    """
    return _rv_disconnected_from_myo(_Slice(mask, spacing))


def frontier_between_lv_and_rv(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """LV pixels (px) 8-adjacent to the RV, 0 when only one touches. Valid: 0."""
    return _frontier(_Slice(mask, spacing), LV, RV)


def frontier_between_lv_and_background(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """LV pixels (px) 8-adjacent to background, 0 when only one touches. Valid: 0."""
    return _frontier(_Slice(mask, spacing), LV, BG)


def lv_concavity(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Depth (mm) of the deepest convexity defect of the filled LV; NaN if absent. Valid: ≤ 4 mm."""
    return _concavity(_Slice(mask, spacing), LV)


def rv_concavity(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Depth (mm) of the deepest convexity defect of the filled RV; NaN if absent. Valid: ≤ 30 mm."""
    return _concavity(_Slice(mask, spacing), RV)


def myo_concavity(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Depth (mm) of the deepest convexity defect of the filled MYO (epicardium); NaN if absent.

    Valid: 0 mm, i.e. no defect survives a 3×3 erosion.
    """
    return _concavity(_Slice(mask, spacing), MYO)


def lv_circularity(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Isoperimetric ratio 4πA/P² (px units) of the filled LV; NaN if absent. Valid: ≥ 0.2."""
    return _circularity(_Slice(mask, spacing), LV)


def myo_circularity(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Isoperimetric ratio 4πA/P² (px units) of the filled MYO; NaN if absent. Valid: ≥ 0.2."""
    return _circularity(_Slice(mask, spacing), MYO)


# --- registry and evaluation -------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """One anatomical criterion: how to compute it and when it passes.

    Attributes:
        name: column name, as in the reference code.
        func: ``func(mask, spacing) -> value``.
        unit: ``"px"``, ``"mm"`` or ``"1"`` (dimensionless).
        rule: ``"zero"`` (value must be 0), ``"max"`` (≤ threshold) or ``"min"`` (≥ threshold).
        threshold: bound for ``"max"``/``"min"`` rules.
    """

    name: str
    func: Callable[[np.ndarray, Sequence[float]], float]
    unit: str
    rule: str = "zero"
    threshold: float = 0.0
    _compute: Callable[[_Slice], float] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def passes(self, value: float) -> bool:
        """Whether ``value`` is valid; NaN (absent structure) passes."""
        return bool(_passed(np.asarray([value], float), self.rule, self.threshold)[0])


def _passed(values: np.ndarray, rule: str, threshold: float) -> np.ndarray:
    if rule == "zero":
        ok = values == 0
    elif rule == "max":
        ok = values <= threshold
    else:
        ok = values >= threshold
    return ok | np.isnan(values)


def _criterion(func, unit, compute, rule="zero", threshold=0.0) -> Criterion:  # type: ignore[no-untyped-def]
    return Criterion(func.__name__, func, unit, rule, threshold, compute)


CRITERIA: tuple[Criterion, ...] = (
    _criterion(holes_in_lv, "px", lambda s: _holes_in(s, LV)),
    _criterion(holes_in_rv, "px", lambda s: _holes_in(s, RV)),
    _criterion(holes_in_myo, "px", _holes_in_myo),
    _criterion(disconnectivity_in_lv, "px", lambda s: _disconnectivity(s, LV)),
    _criterion(disconnectivity_in_rv, "px", lambda s: _disconnectivity(s, RV)),
    _criterion(disconnectivity_in_myo, "px", lambda s: _disconnectivity(s, MYO)),
    _criterion(holes_between_lv_and_myo, "px", lambda s: _holes_between(s, LV, MYO)),
    _criterion(holes_between_rv_and_myo, "px", lambda s: _holes_between(s, RV, MYO)),
    _criterion(rv_disconnected_from_myo, "mm", _rv_disconnected_from_myo),
    _criterion(frontier_between_lv_and_rv, "px", lambda s: _frontier(s, LV, RV)),
    _criterion(frontier_between_lv_and_background, "px", lambda s: _frontier(s, LV, BG)),
    _criterion(lv_concavity, "mm", lambda s: _concavity(s, LV), "max", 4.0),
    _criterion(rv_concavity, "mm", lambda s: _concavity(s, RV), "max", 30.0),
    _criterion(myo_concavity, "mm", lambda s: _concavity(s, MYO), "max", 0.0),
    _criterion(lv_circularity, "1", lambda s: _circularity(s, LV), "min", 0.2),
    _criterion(myo_circularity, "1", lambda s: _circularity(s, MYO), "min", 0.2),
)
"""The 16 criteria in the reference order (columns of :func:`evaluate_batch`)."""

CRITERIA_NAMES: tuple[str, ...] = tuple(c.name for c in CRITERIA)


def _evaluate(s: _Slice) -> list[float]:
    if not s.counts[1:].any():
        return [0.0] * 11 + [float("nan")] * 5  # empty slice: no structure, nothing to measure
    return [c._compute(s) for c in CRITERIA]


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
    return dict(zip(CRITERIA_NAMES, _evaluate(_Slice(mask, spacing)), strict=False))


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
        values[i] = _evaluate(_Slice(masks[i], sp[i], checked=True))
    return values, criteria_passed(values).all(axis=1)
