"""The measurements the anatomical criteria are made of, on a prepared slice.

:class:`PreparedSlice` crops a label map ``(H, W)`` (0 background, 1 RV, 2 MYO, 3 LV) to its
foreground plus a 1-pixel ring and caches each structure's binary map, bounding box and holes,
so that evaluating the 16 criteria of :mod:`acdctool.metrics.anatomy` crops and labels each
structure once. Each measure here takes a prepared slice (and the labels it looks at) and
returns a float: pixel counts (px), distances (mm, from the slice's spacing) or a
dimensionless ratio; NaN where a shape measure has no structure to measure. The definitions,
tolerances and departures from the reference code are documented in
:mod:`acdctool.metrics.anatomy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage.measure import perimeter

from acdctool.conventions import BACKGROUND, LABEL_OF, N_CLASSES
from acdctool.metrics.overlap import check_label_map, check_spacing

__all__ = [
    "PreparedSlice",
    "convex_hull",
    "holes_in",
    "myo_holes",
    "disconnected",
    "holes_between",
    "rv_myo_gap",
    "frontier",
    "concavity",
    "circularity",
]

BG, RV, MYO, LV = BACKGROUND, LABEL_OF["rv"], LABEL_OF["myo"], LABEL_OF["lv"]
_OUTSIDE = 255  # crop pixels beyond the image: neither background nor any structure
_CROSS = ndimage.generate_binary_structure(2, 1)
_SQUARE = np.ones((3, 3), dtype=bool)
_EPS = 1e-9


class PreparedSlice:
    """One slice cropped to its foreground plus a 1-pixel ring, with cached binary maps.

    Every criterion reads this instead of the full mask so that ``evaluate_slice`` crops and
    labels each structure once, however many criteria use it.

    Args:
        mask: label map ``(H, W)``, values in 0..3.
        spacing: ``(row_mm, col_mm)``.
        checked: skip the input checks (the caller has done them).

    Raises:
        BadInputError: (unless ``checked``) not 2D, non-integer, labels outside 0..3, bad spacing.
    """

    def __init__(self, mask: np.ndarray, spacing: Sequence[float], checked: bool = False) -> None:
        if not checked:
            mask = check_label_map(mask, 2)
            spacing = check_spacing(spacing, 2)
        self.spacing = tuple(float(s) for s in spacing)
        h, w = mask.shape
        self.tolerance = h * w / 2**14
        self.counts = np.bincount(mask.ravel(), minlength=N_CLASSES)
        self._cache: dict[tuple[Any, ...], Any] = {}
        self.outside: np.ndarray | None
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


def convex_hull(a: np.ndarray) -> np.ndarray:
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


# --- the measures, on a prepared slice --------------------------------------------------------


def holes_in(s: PreparedSlice, label: int) -> float:
    """Pixels (px) of other labels enclosed by ``label`` (8-connected background); 0 if absent."""
    return _count(s.holes(label, 8)) if s.present(label) else 0.0


def myo_holes(s: PreparedSlice) -> float:
    """Pixels (px) enclosed by the MYO that are not LV; 0 if the MYO is absent."""
    if not s.present(MYO):
        return 0.0
    # The LV is supposed to fill the MYO ring: only what else the ring encloses is a hole.
    return _count(s.holes(MYO, 8) & ~s.struct(LV))


def disconnected(s: PreparedSlice, label: int) -> float:
    """Pixels (px) of ``label`` outside its largest 8-connected component; 0 if absent."""
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


def holes_between(s: PreparedSlice, a: int, b: int) -> float:
    """Pixels (px) enclosed by ``a`` and ``b`` together but in neither, 0 up to the tolerance.

    Holes of one structure that do not contain the other are filled first (they count as holes
    in that structure instead); 0 when either is absent.
    """
    if not (s.present(a) and s.present(b)):
        return 0.0  # nothing can be enclosed between a structure and nothing
    sa, sb = s.struct(a), s.struct(b)
    union = sa | sb | _holes_without(s.holes(a, 4), sb) | _holes_without(s.holes(b, 4), sa)
    lab, n = ndimage.label(~union, _CROSS)
    gap = _count((lab != lab[0, 0]) & (lab > 0)) if n > 1 else 0.0
    return gap if gap > s.tolerance else 0.0


def rv_myo_gap(s: PreparedSlice) -> float:
    """Smallest distance (mm) from a pixel next to the RV to the MYO; 0 when they touch or one is absent."""
    if not (s.present(RV) and s.present(MYO)):
        return 0.0
    rv = ndimage.binary_dilation(s.struct(RV), _SQUARE)
    if s.outside is not None:
        rv &= ~s.outside
    myo = s.struct(MYO)
    if (rv & myo).any():
        return 0.0
    return float(ndimage.distance_transform_edt(~myo, sampling=s.spacing)[rv].min())


def frontier(s: PreparedSlice, a: int, b: int) -> float:
    """Pixels (px) of ``a`` 8-adjacent to ``b``; 0 when only one touches or either is absent."""
    if not (s.present(a) and s.present(b)):
        return 0.0
    box = s.box(a)  # pixels of b outside it cannot touch a
    touching = _count(s.struct(a)[box] & ndimage.binary_dilation(s.struct(b)[box], _SQUARE))
    return touching if touching > 1 else 0.0


def concavity(s: PreparedSlice, label: int) -> float:
    """Depth (mm) of the deepest convexity defect of the filled ``label`` (3×3-eroded); NaN if absent."""
    if not s.present(label):
        return float("nan")
    box = s.box(label)  # holes lie inside the structure's bounding box
    filled = s.filled(label)[box]
    hull = convex_hull(filled)
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


def circularity(s: PreparedSlice, label: int) -> float:
    """``4πA/P²`` (px units) of the filled ``label``; NaN if absent or a single pixel."""
    if not s.present(label):
        return float("nan")
    filled = s.filled(label)[s.box(label)]
    perim = perimeter(filled, 4)
    if perim < 1e-6:
        return float("nan")  # a single pixel has no measurable perimeter
    return float(4.0 * np.pi * np.count_nonzero(filled) / perim**2)
