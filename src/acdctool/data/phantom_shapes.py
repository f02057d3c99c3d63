"""Geometry and rendering of one synthetic cine-MRI heart (helpers of :mod:`acdctool.data.synth`).

Conventions: volumes are float32 arrays of shape (X, Y, Z) like ACDC files; positions are in mm
with the image centre at (0, 0); ``z`` grows from the base (slice 0) towards the apex, with
``z = 0`` at the LV base at end-diastole. Shapes are drawn in mm and sampled on the pixel grid,
so the same heart covers more pixels when the spacing is finer. The contraction state ``c`` is
0 at end-diastole (ED) and 1 at end-systole (ES).

Intensities are relative to blood = 1 until the final scale in :meth:`HeartModel.render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

# Per-group ranges (uniform draws). r_lv: LV cavity radius at the base (mm); length: LV cavity
# length base->apex (mm); wall: ED wall thickness (mm); ef: LV ejection fraction; rv_h: largest
# RV crescent depth (mm); rv_span: RV half-angle around the LV (rad); shorten: base descent at
# ES as a fraction of the length. Chosen so EF and volumes resemble ACDC's groups.
# The RV covers about the septal third of the LV (a dilated RV a little more and deeper): the
# hull of a crescent of half-angle a around an epicardium of radius R bridges a defect about
# R (1 - cos a) deep, which must stay well under the 30 mm RV concavity limit of the anatomical
# criteria (measured: <= 25 mm) -- a wider wrap is what real RVs do not do.
GROUP_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "NOR": dict(
        r_lv=(24, 28),
        length=(80, 95),
        wall=(7, 10),
        ef=(0.56, 0.66),
        rv_h=(25, 32),
        rv_span=(1.0, 1.2),
        rv_ef=(0.45, 0.6),
        shorten=(0.06, 0.10),
    ),
    "MINF": dict(
        r_lv=(26, 31),
        length=(85, 100),
        wall=(6.5, 9),
        ef=(0.34, 0.48),
        rv_h=(25, 32),
        rv_span=(1.0, 1.2),
        rv_ef=(0.35, 0.5),
        shorten=(0.04, 0.07),
    ),
    "DCM": dict(
        r_lv=(32, 38),
        length=(95, 112),
        wall=(5.5, 7.5),
        ef=(0.12, 0.26),
        rv_h=(27, 35),
        rv_span=(0.95, 1.1),
        rv_ef=(0.25, 0.4),
        shorten=(0.02, 0.04),
    ),
    "HCM": dict(
        r_lv=(19, 23),
        length=(70, 84),
        wall=(13, 19),
        ef=(0.70, 0.80),
        rv_h=(21, 28),
        rv_span=(1.0, 1.2),
        rv_ef=(0.5, 0.65),
        shorten=(0.06, 0.10),
    ),
    "RV": dict(
        r_lv=(22, 26),
        length=(78, 92),
        wall=(7, 9.5),
        ef=(0.52, 0.64),
        rv_h=(40, 50),
        rv_span=(1.15, 1.35),
        rv_ef=(0.2, 0.35),
        shorten=(0.05, 0.08),
    ),
}

OPEN_BASE_FRACTION = 0.1
"""Share of patients whose most basal LV slice has an open myocardial ring (LVOT)."""


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _occ(signed_mm: np.ndarray, px_mm: float) -> np.ndarray:
    """Soft occupancy (0..1) from a signed distance inside a boundary (mm): a one-pixel ramp,
    which mimics partial-volume edges; 0.5 sits exactly on the mask boundary."""
    return np.clip(signed_mm / px_mm + 0.5, 0.0, 1.0)


def _wrap(angle: np.ndarray | float) -> Any:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _rbf_basis(n: int, cells: int) -> np.ndarray:
    """(n, cells) Gaussian bumps at evenly spaced knots, one knot beyond each end."""
    step = n / max(cells - 2, 1)
    knots = step * (np.arange(cells) - 1.0)
    return np.exp(-0.5 * ((np.arange(n)[:, None] - knots[None, :]) / step) ** 2).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cells: tuple[int, int, int]) -> np.ndarray:
    """Smooth random field of unit standard deviation, shape ``shape``: a coarse normal grid
    with ``cells`` knots per axis (fewer cells = larger blobs) spread by Gaussian kernels.

    Separable matrix products instead of spline zooming: ~50x faster on a full volume.
    """
    cells = tuple(max(3, int(c)) for c in cells)  # type: ignore[assignment]
    coarse = rng.standard_normal(cells, dtype=np.float32)
    bx, by, bz = (_rbf_basis(n, c) for n, c in zip(shape, cells, strict=False))
    field = (bx @ coarse.reshape(cells[0], -1)).reshape(shape[0], cells[1], cells[2])
    field = np.matmul(by, field) @ bz.T  # (X, gy, gz) -> (X, Y, gz) -> (X, Y, Z)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _perturbation(rng: np.random.Generator, phi: np.ndarray, nz: int, amps: dict[int, float]) -> np.ndarray:
    """Smooth radial perturbation sum_k a_k cos(k phi - psi_k) (relative, shape of ``phi``).

    Amplitudes and phases drift slowly from slice to slice so neighbouring slices look alike but
    the shape is not a perfect extrusion. Small amplitudes for k >= 2 keep contours convex.
    """
    zf = np.linspace(0.0, 1.0, nz)
    out = np.zeros(phi.shape, np.float32)
    for k, amax in amps.items():
        a = _u(rng, 0.3, 1.0) * amax * np.clip(1 + 0.25 * rng.standard_normal(nz), 0.4, 1.6)
        psi = rng.uniform(-np.pi, np.pi) + _u(rng, -0.6, 0.6) * zf + 0.08 * rng.standard_normal(nz)
        out += a.astype(np.float32) * np.cos(np.float32(k) * phi - psi.astype(np.float32))
    return out


def _ellipse(x: np.ndarray, y: np.ndarray, cx: Any, cy: Any, a: Any, b: Any, rot: float, px_mm: float) -> np.ndarray:
    """Soft occupancy of an ellipse (centre, semi-axes in mm; may vary per slice as (Z,))."""
    dx, dy = x - cx, y - cy
    cr, sr = np.cos(rot), np.sin(rot)
    u, v = dx * cr + dy * sr, dy * cr - dx * sr
    a, b = np.maximum(a, 1e-3), np.maximum(b, 1e-3)
    e = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return _occ((1.0 - e) * np.minimum(a, b), px_mm).astype(np.float32)


def _paint(img: np.ndarray, occ: np.ndarray, value: Any) -> None:
    """Composite ``value`` over ``img`` in place with soft occupancy ``occ``."""
    img += occ * (value - img)


def _paint_ellipse(
    img: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cx: float,
    cy: float,
    a: Any,
    b: Any,
    rot: float,
    px_mm: float,
    value: Any,
    weight: np.ndarray | None = None,
) -> None:
    """Paint a soft ellipse (see :func:`_ellipse`) into ``img`` (X, Y, Z), optionally weighted
    by ``weight`` (X, Y, 1); only its bounding box is computed, which keeps organs cheap."""
    reach = float(np.max(np.maximum(a, b))) + 2 * px_mm
    i0, i1 = np.searchsorted(x[:, 0, 0], [cx - reach, cx + reach])
    j0, j1 = np.searchsorted(y[0, :, 0], [cy - reach, cy + reach])
    if i1 <= i0 or j1 <= j0:
        return
    box = (slice(i0, i1), slice(j0, j1))
    occ = _ellipse(x[box[0]], y[:, box[1]], cx, cy, a, b, rot, px_mm)
    if weight is not None:
        occ = occ * weight[box]
    _paint(img[box], occ, value[box] if isinstance(value, np.ndarray) else value)


@dataclass
class HeartModel:
    """Everything static about one phantom patient; :meth:`render` draws one cine frame.

    Attributes:
        spacing: (x, y, z) voxel size in mm (square pixels).
        shape: (X, Y, Z) in px.
        p: scalar parameters (mm, rad, fractions, relative intensities).
        z: (Z,) slice positions in mm (0 = LV base at ED, positive towards the apex).
        box: in-plane index slices of the crop around the heart; heart arrays below cover only
            this crop, shape (X', Y', Z), which makes rendering several times cheaper.
        r, phi, dx, dy: polar/cartesian coordinates around each slice's LV centre (mm; rad, 0
            pointing at the RV).
        pert: relative radial perturbations of endocardium, wall, RV and fat.
        bump: infarct weight 0..1 (MINF) or None.
        open_sector: bool, angular sector where the most basal ring may be open (LVOT).
        tex: unit-std smooth texture of blood and muscle.
        background, bias: (X, Y, Z) static surroundings and multiplicative bias field.
    """

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    p: dict[str, float]
    z: np.ndarray
    box: tuple[slice, slice]
    r: np.ndarray
    phi: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    pert: dict[str, np.ndarray]
    bump: np.ndarray | None
    open_sector: np.ndarray
    tex: np.ndarray
    background: np.ndarray
    bias: np.ndarray

    def levels(self, c: float) -> dict[str, Any]:
        """Per-slice (Z,) geometry at contraction ``c``: radii and depths in mm.

        The apex stays fixed while the base descends by ``shorten * length`` at ES; every slice
        is mapped to its ED-equivalent level ``z_ed`` so that the whole LV shrinks smoothly.
        Myocardial area per level scales with the long-axis shortening (volume is conserved),
        which thickens the wall at ES without a separate parameter.
        """
        p = self.p
        length = p["length"]
        zb = c * p["shorten"] * length
        lc = length - zb
        # Stretch only the part above the cavity apex: the apical cap does not move.
        z_ed = np.where(self.z < length, (self.z - zb) * length / lc, self.z)
        inside = (z_ed >= 0).astype(np.float64)
        te = z_ed / length
        endo_ed = p["r_lv"] * np.sqrt(np.clip(1 - te**2, 0, 1)) * inside
        le = length + 0.8 * p["wall"]
        epi_ed = (p["r_lv"] + p["wall"]) * np.sqrt(np.clip(1 - (z_ed / le) ** 2, 0, 1)) * inside
        f_l = 1 - p["shorten"]
        f_r = min(np.sqrt((1 - p["ef"]) / f_l), 0.97)
        endo_c = endo_ed * (1 - c * (1 - f_r))
        epi_c = np.sqrt(endo_c**2 + (epi_ed**2 - endo_ed**2) * length / lc)
        rv_prof = np.sqrt(np.clip(1 - (te / p["rv_end"]) ** 2, 0, 1)) * (te >= p["rv_start"])
        g_rv = np.clip((1 - p["rv_ef"]) / f_l, 0.3, 1.0)
        atrium_len = 0.35 * length
        atrium = 0.8 * p["r_lv"] * np.sqrt(np.clip(1 - (z_ed / atrium_len) ** 2, 0, 1)) * (z_ed < 0)
        return dict(
            te=te,
            f_r=float(f_r),
            endo_ed=endo_ed,
            wall_ed=epi_ed - endo_ed,
            wall_c=epi_c - endo_c,
            rv_h=p["rv_h"] * rv_prof * (1 - c * (1 - g_rv)),
            rv_span=p["rv_span"] * (0.55 + 0.45 * rv_prof),
            atrium=atrium,
        )

    def render(self, c: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw one frame at contraction ``c`` (0 = ED, 1 = ES).

        Returns:
            image: (X, Y, Z) float32, final intensity scale (>= 0), noisy.
            labels: (X, Y, Z) uint8 with 0 bg, 1 RV, 2 MYO, 3 LV, from the same contours
                (each label is the 0.5 level of the soft occupancy used for the image).
        """
        p, px, c = self.p, self.spacing[0], float(c)
        lv = self.levels(c)
        z3 = lambda a: np.asarray(a, np.float32)[None, None, :]  # noqa: E731  (Z,) -> broadcast
        bump = self.bump if self.bump is not None else np.float32(0)
        # The infarcted segment is akinetic and thinned: it neither moves inward nor thickens.
        kin = 1 - c * (1 - lv["f_r"]) * (1 - 0.85 * bump)
        r_endo = z3(lv["endo_ed"]) * (1 + self.pert["endo"]) * kin
        wall_ed, wall_c = z3(lv["wall_ed"]), z3(lv["wall_c"])
        # Scar thinning fades out towards the apical cap, where the wall is all there is: thinning
        # it would bite a notch into the (convex) epicardial disc.
        cap = z3(np.clip(lv["endo_ed"] / np.maximum(lv["wall_ed"], 1e-3), 0, 1))
        wall = (wall_ed + (wall_c - wall_ed) * (1 - bump)) * (1 - p["thin"] * bump * cap)
        r_epi = r_endo + wall * (1 + self.pert["wall"])
        u = self.phi / np.maximum(z3(lv["rv_span"]), 1e-3)
        h = z3(lv["rv_h"]) * np.clip(1 - u**2, 0, 1) ** 0.6 * (1 + self.pert["rv"])
        h = np.maximum(h - 0.5 * px, 0)  # no sub-pixel slivers at the horn tips
        r_out = r_epi + h

        r = self.r
        labels = np.zeros(r.shape, np.uint8)
        labels[r < r_out] = 1
        labels[r < r_epi] = 2
        labels[r < r_endo] = 3
        # LVOT: in a minority of patients the ring of the most basal LV slice is open, as
        # annotators draw it when the slice cuts through the outflow tract (ACDC: ~0.6% of slices).
        on = np.zeros(r.shape[2], bool)
        if p["open"]:
            has_lv = (labels == 3).any(axis=(0, 1))
            if has_lv.any():
                on[int(np.argmax(has_lv))] = True
        is_open = self.open_sector & on[None, None, :]
        labels[(labels == 2) & is_open] = 0
        for label in (1, 2):
            _keep_largest(labels, label)

        full = self.background.copy()
        img = full[self.box]  # a view: painting it paints the full image
        blood = np.float32(1.0) + 0.08 * self.tex
        myo = np.float32(p["myo"]) * (1 + 0.05 * self.tex)
        rv_wall = 2.5 * np.clip(h / 3, 0, 1)
        fat = np.clip(self.pert["fat"] - 0.1, 0, 1.2) * p["fat_w"]  # patchy epicardial fat
        _paint(img, _occ(r_out + rv_wall + fat - r, px), p["fat"])
        _paint(img, _occ(r_out + rv_wall - r, px) * (h > 0), myo)
        _paint(img, _occ(r_out - r, px), blood * p["rv_blood"])
        _paint(img, _occ(r_epi - r, px), np.where(is_open, blood, myo))
        _paint(img, _occ(r_endo - r, px), blood)
        for ang in (p["pap1"], p["pap2"]):
            # Papillary muscles: dark spots inside the bright cavity, labelled LV as in ACDC.
            rho = 0.62 * lv["endo_ed"] * (1 - c * (1 - lv["f_r"]))
            ox, oy = rho * np.cos(p["theta_rv"] + ang), rho * np.sin(p["theta_rv"] + ang)
            d = np.sqrt((self.dx - z3(ox)) ** 2 + (self.dy - z3(oy)) ** 2)
            present = z3((lv["te"] > 0.25) & (lv["te"] < 0.85))
            occ = _occ(p["pap_r"] * (1 + 0.3 * c) - d, px) * present * (labels == 3)
            _paint(img, occ, myo)
        # Basal slices above the valve plane show atrial blood but carry no label.
        _paint(img, _occ(z3(lv["atrium"]) * (1 + self.pert["endo"]) - r, px), blood * 0.9)

        full_labels = np.zeros(self.shape, np.uint8)
        full_labels[self.box] = labels
        img = ndimage.gaussian_filter(full, sigma=(p["blur"], p["blur"], 0), truncate=3.0)
        img *= self.bias
        sigma = np.float32(p["noise"])
        n1 = rng.standard_normal(self.shape, dtype=np.float32) * sigma
        n2 = rng.standard_normal(self.shape, dtype=np.float32) * sigma
        img = np.sqrt((img + n1) ** 2 + n2**2)  # magnitude of complex noise: Rician statistics
        return img * np.float32(p["scale"]), full_labels


def _keep_largest(labels: np.ndarray, label: int) -> None:
    """Keep only the largest in-plane component of ``label`` in each slice of (X, Y, Z) labels
    (pixel sampling can cut a thin horn into stray pixels that no annotator would draw)."""
    for k in range(labels.shape[2]):
        comp, n = ndimage.label(labels[:, :, k] == label)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            labels[:, :, k][(comp > 0) & (comp != sizes.argmax())] = 0


def _draw_grid(rng: np.random.Generator, extent: float) -> tuple[float, float, int, int]:
    """In-plane spacing (mm), slice spacing (mm), X and Y sizes (px) with a 250-380 mm FOV
    and at least 150 px (or Y's size) along X, wide enough for a heart ``extent`` mm in radius."""
    sp = float(np.float32(round(_u(rng, 0.7, 1.9), 4)))
    dz = round(_u(rng, 5.0, 10.0) * 2) / 2
    lo, hi = max(250.0, 150 * sp), min(380.0, 300 * sp)
    ny = int(round(_u(rng, lo, max(lo, hi)) / sp))
    nx = int(round(ny * _u(rng, 0.72, 1.0)))  # ACDC frames are often wider than tall
    nx = min(ny, max(nx, 150, int(np.ceil(2 * (extent + 10) / sp))))
    return sp, dz, nx, ny


def build_model(rng: np.random.Generator, group: str) -> HeartModel:
    """Draw one patient of ``group`` (one of ``GROUP_RANGES``) and precompute its static arrays."""
    ranges = GROUP_RANGES[group]
    p: dict[str, float] = {k: _u(rng, *v) for k, v in ranges.items()}
    extent = p["r_lv"] + p["wall"] + p["rv_h"] + 12  # heart radius incl. RV and fat (mm)
    sp, dz, nx, ny = _draw_grid(rng, extent)
    fov_x, fov_y = nx * sp, ny * sp

    # Slice stack: starts near the ES base (a third of ES basal slices are then empty, as the
    # base has moved past them); may overrun the apex by one slice. Big hearts get thicker
    # slices so that 14 slices still reach the apex, as in ACDC.
    dz = max(dz, float(np.ceil(2 * (p["length"] + 0.8 * p["wall"]) / 12.6) / 2))
    z0 = p["shorten"] * p["length"] + _u(rng, -0.2, 0.45) * dz
    span = p["length"] + 0.8 * p["wall"] - z0
    nz = int(np.clip(np.ceil(span / dz) + (rng.random() < 0.15), 6, 14))
    z = z0 + dz * np.arange(nz)

    p["theta_rv"] = float(np.deg2rad(_u(rng, 115, 175)))  # RV towards -x,+y as in ACDC files
    p.update(rv_start=_u(rng, 0.0, 0.08), rv_end=_u(rng, 0.7, 0.9))
    # Keep the whole heart inside the FOV however the centre is drawn.
    lim = np.array([max(0.0, fov_x / 2 - extent), max(0.0, fov_y / 2 - extent)])
    off = rng.uniform(-1, 1, 2) * np.minimum(0.15 * np.array([fov_x, fov_y]), lim)
    tilt = rng.uniform(-0.2, 0.2, 2)  # long axis not quite perpendicular to the slices
    jitter = rng.normal(0, 0.8, (nz, 2))  # breath-hold mismatch between slices
    centre = off + np.outer(z - z.mean(), tilt) + jitter
    centre = np.clip(centre, -lim, lim)

    x = ((np.arange(nx) - (nx - 1) / 2) * sp).astype(np.float32)[:, None, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * sp).astype(np.float32)[None, :, None]
    # Farthest radius anything of the heart is painted at (RV, its wall, fat, ES thickening).
    reach = 1.25 * (p["r_lv"] + p["wall"]) + 1.3 * p["rv_h"] + 16 + 3 * sp
    i0, i1 = np.searchsorted(x[:, 0, 0], [centre[:, 0].min() - reach, centre[:, 0].max() + reach])
    j0, j1 = np.searchsorted(y[0, :, 0], [centre[:, 1].min() - reach, centre[:, 1].max() + reach])
    box = (slice(int(i0), int(i1)), slice(int(j0), int(j1)))
    dx = x[box[0]] - centre[:, 0].astype(np.float32)[None, None, :]
    dy = y[:, box[1]] - centre[:, 1].astype(np.float32)[None, None, :]
    r = np.sqrt(dx**2 + dy**2)
    phi = _wrap(np.arctan2(dy, dx) - np.float32(p["theta_rv"])).astype(np.float32)

    pert = {
        "endo": _perturbation(rng, phi, nz, {2: _u(rng, 0.02, 0.08), 3: 0.025, 4: 0.015}),
        "wall": _perturbation(rng, phi, nz, {1: 0.12, 2: 0.06, 3: 0.04}),
        "rv": _perturbation(rng, phi, nz, {1: 0.15, 2: 0.08, 3: 0.05}),
        "fat": _perturbation(rng, phi, nz, {1: 0.8, 2: 0.5, 3: 0.3}),
    }
    bump = None
    p["thin"] = 0.0
    if group == "MINF":
        # Transmural infarct: a flat-topped angular sector from mid-ventricle to the apex.
        ang, width, t0 = _u(rng, -np.pi, np.pi), _u(rng, 0.5, 0.9), _u(rng, 0.15, 0.5)
        p["thin"] = _u(rng, 0.35, 0.6)
        ramp = np.clip((z / p["length"] - t0) / 0.15, 0, 1).astype(np.float32)
        bump = np.exp(-((_wrap(phi - ang) / width) ** 4)) * ramp[None, None, :]
    open_ang = float(rng.choice([-1.0, 1.0])) * _u(rng, 1.0, 2.0)
    open_sector = np.abs(_wrap(phi - open_ang)) < _u(rng, 0.3, 0.6)
    p["open"] = float(rng.random() < OPEN_BASE_FRACTION)
    p.update(pap1=np.pi + _u(rng, 0.5, 0.9), pap2=np.pi - _u(rng, 0.5, 0.9), pap_r=_u(rng, 2.0, 3.5))
    p.update(
        myo=_u(rng, 0.28, 0.4),
        fat=_u(rng, 0.8, 1.1),
        fat_w=_u(rng, 1.0, 5.0),
        rv_blood=_u(rng, 0.9, 1.0),
        blur=_u(rng, 0.3, 0.7),
        noise=_u(rng, 0.02, 0.05),
        scale=_u(rng, 250, 700),
    )

    shape = (nx, ny, nz)
    cells_fine = (int(r.shape[0] * sp / 6), int(r.shape[1] * sp / 6), nz)
    tex = smooth_noise(rng, r.shape, cells_fine)
    background = _background(rng, x, y, z, centre, p, (fov_x, fov_y), sp, shape)
    bias = np.exp(_u(rng, 0.1, 0.3) * smooth_noise(rng, shape, (4, 4, 4))).astype(np.float32)
    return HeartModel(
        (sp, sp, float(dz)), shape, p, z, box, r, phi, dx, dy, pert, bump, open_sector, tex, background, bias
    )


def _background(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: np.ndarray,
    p: dict[str, float],
    fov: tuple[float, float],
    sp: float,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Static surroundings (X, Y, Z): air, body with a bright fat rim and textured soft tissue,
    dark lungs beside the heart, liver towards the apex, a bright aorta and random blobs."""
    nz = shape[2]
    zf = np.linspace(0.0, 1.0, nz, dtype=np.float32)
    img = np.full(shape, 0.015, np.float32)
    bx, by = _u(rng, -0.05, 0.05) * fov[0], _u(rng, -0.05, 0.05) * fov[1]
    ax, ay = _u(rng, 0.42, 0.62) * fov[0], _u(rng, 0.55, 0.85) * fov[1]  # may overrun the FOV
    _paint_ellipse(img, x, y, bx, by, ax, ay, 0.0, sp, p["fat"])
    rim = _u(rng, 4, 14)
    body = _ellipse(x, y, bx, by, ax - rim, ay - rim, 0.0, sp)
    tissue = _u(rng, 0.2, 0.4) * (1 + 0.25 * smooth_noise(rng, shape, (int(fov[0] / 25), int(fov[1] / 25), 4)))
    tissue = tissue * (1 + 0.1 * smooth_noise(rng, shape, (int(fov[0] / 8), int(fov[1] / 8), nz)))
    _paint(img, body, np.clip(tissue, 0.05, None))

    c0 = [float(v) for v in centre.mean(axis=0)]
    heart_r = p["r_lv"] + p["wall"]

    def organ(angle: float, dist: float, a: float, b: float, scale_z: np.ndarray, value: Any) -> None:
        cx, cy = c0[0] + dist * np.cos(angle), c0[1] + dist * np.sin(angle)
        _paint_ellipse(img, x, y, cx, cy, a * scale_z, b * scale_z, _u(rng, 0, np.pi), sp, value, body)

    th = p["theta_rv"]
    lung = _u(rng, 0.03, 0.1)
    a1 = _u(rng, 35, 65)
    organ(th + np.pi + _u(rng, -0.6, 0.6), heart_r + _u(rng, 10, 25) + a1, a1, _u(rng, 25, 45), 1.15 - 0.5 * zf, lung)
    a2 = _u(rng, 20, 40)
    organ(
        th + _u(rng, -0.4, 0.4), heart_r + p["rv_h"] + _u(rng, 15, 35) + a2, a2, _u(rng, 15, 30), 1.1 - 0.5 * zf, lung
    )
    organ(
        th + np.pi / 2 + _u(rng, -0.5, 0.5),
        _u(rng, 70, 110),
        _u(rng, 50, 80),
        _u(rng, 35, 55),
        0.3 + 0.9 * zf,
        _u(rng, 0.3, 0.45),
    )
    ao = _u(rng, 9, 14)
    organ(
        th + np.pi + _u(rng, -1.2, 1.2),
        heart_r + _u(rng, 12, 25) + ao,
        ao,
        ao * _u(rng, 0.9, 1.1),
        np.ones(nz, np.float32),
        _u(rng, 0.8, 1.0),
    )
    for _ in range(int(rng.integers(3, 8))):
        zc, zl = _u(rng, -0.3, 1.3), _u(rng, 0.3, 1.0)
        sz = np.sqrt(np.clip(1 - ((zf - zc) / zl) ** 2, 0, 1))
        cx, cy = _u(rng, -0.4, 0.4) * fov[0], _u(rng, -0.4, 0.4) * fov[1]
        _paint_ellipse(
            img, x, y, cx, cy, _u(rng, 5, 20) * sz, _u(rng, 5, 20) * sz, _u(rng, 0, np.pi), sp, _u(rng, 0.1, 0.9), body
        )
    return img
