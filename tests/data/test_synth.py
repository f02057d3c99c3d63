"""Synthetic ACDC phantoms in memory: Info.cfg text, physiology, geometry, image contrast.

Writing them into an ACDC folder is the ``synth`` stage: ``tests/stages/test_synth_stage.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acdctool.config import SynthConfig
from acdctool.conventions import GROUPS
from acdctool.data.synth import Phantom, contraction, group_of, info_cfg_text, make_patient


def _volume_ml(mask: np.ndarray, label: int, spacing: tuple[float, float, float]) -> float:
    return float((mask == label).sum() * np.prod(spacing) / 1000.0)


@pytest.fixture(scope="module")
def cohort() -> list[Phantom]:
    """Ten patients, two per group, ED and ES only."""
    config = SynthConfig(patients=10, seed=0)
    return [make_patient(n, group_of(n), config) for n in range(1, 11)]


def test_info_cfg_text() -> None:
    text = info_cfg_text({"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "NbFrame": 30, "Weight": 95.0})
    assert text == "ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"


@pytest.mark.real
def test_info_cfg_matches_real_file_style(acdc_dir: Path) -> None:
    values = {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "NbFrame": 30, "Weight": 95.0}  # patient001's
    assert info_cfg_text(values) == (acdc_dir / "patient001" / "Info.cfg").read_text()


def test_deterministic_and_seed_dependent() -> None:
    config = SynthConfig(seed=3)
    a, b = make_patient(4, "HCM", config), make_patient(4, "HCM", config)
    assert a.spacing == b.spacing and a.es == b.es and a.info == b.info
    for f in (a.ed, a.es):
        np.testing.assert_array_equal(a.images[f], b.images[f])
        np.testing.assert_array_equal(a.masks[f], b.masks[f])
    c = make_patient(4, "HCM", SynthConfig(seed=4))
    assert c.spacing != a.spacing or not np.array_equal(c.images[1], a.images[1])
    # ED/ES do not depend on whether the other cine frames are rendered.
    full = make_patient(4, "HCM", SynthConfig(seed=3, frames=config.frames), all_frames=True)
    np.testing.assert_array_equal(full.images[a.es], a.images[a.es])
    np.testing.assert_array_equal(full.masks[a.ed], a.masks[a.ed])


def test_grid_varies_within_acdc_ranges(cohort: list[Phantom]) -> None:
    sx = [p.spacing[0] for p in cohort]
    assert all(0.7 <= s <= 1.9 for s in sx) and max(sx) - min(sx) > 0.5
    assert all(5.0 <= p.spacing[2] <= 10.0 for p in cohort)
    for p in cohort:
        x, y, z = p.masks[p.ed].shape
        assert 6 <= z <= 14
        assert 150 <= min(x, y) and max(x, y) <= 560
        assert 240 <= y * p.spacing[1] <= 390  # field of view in mm
        assert p.images[p.ed].dtype == np.int16 and p.masks[p.ed].dtype == np.uint8
        assert p.images[p.ed].shape == p.masks[p.ed].shape == p.masks[p.es].shape
        assert p.images[p.ed].min() >= 0


def test_lv_contracts_and_ef_ordered_by_group(cohort: list[Phantom]) -> None:
    ef: dict[str, list[float]] = {g: [] for g in GROUPS}
    for p in cohort:
        ed = _volume_ml(p.masks[p.ed], 3, p.spacing)
        es = _volume_ml(p.masks[p.es], 3, p.spacing)
        assert ed > es > 0, p.name
        ef[p.group].append(1 - es / ed)
    mean = {g: float(np.mean(v)) for g, v in ef.items()}
    assert mean["DCM"] < mean["MINF"] < mean["NOR"] < mean["HCM"], mean
    assert mean["DCM"] < 0.35 and 0.5 < mean["NOR"] < 0.72 and mean["HCM"] > 0.65, mean
    assert abs(mean["RV"] - mean["NOR"]) < 0.15  # LV normal in the RV group


def test_group_sizes_and_wall_thickness(cohort: list[Phantom]) -> None:
    by = {g: [p for p in cohort if p.group == g] for g in GROUPS}
    lv_ed = {g: [_volume_ml(p.masks[p.ed], 3, p.spacing) for p in ps] for g, ps in by.items()}
    assert min(lv_ed["DCM"]) > max(lv_ed["HCM"])
    # HCM: thick wall around a small cavity; DCM: thin wall around a big one.
    ratio = {g: [(p.masks[p.ed] == 2).sum() / (p.masks[p.ed] == 3).sum() for p in ps] for g, ps in by.items()}
    assert min(ratio["HCM"]) > 2 * max(ratio["DCM"])
    rv_ed = {g: [_volume_ml(p.masks[p.ed], 1, p.spacing) for p in ps] for g, ps in by.items()}
    assert min(rv_ed["RV"]) > max(rv_ed["NOR"])
    assert all(rv > lv for rv, lv in zip(rv_ed["RV"], lv_ed["RV"], strict=False))


def test_physical_size_independent_of_spacing(cohort: list[Phantom]) -> None:
    for p in cohort:
        ed = _volume_ml(p.masks[p.ed], 3, p.spacing)
        assert 40 <= ed <= 400, (p.name, p.spacing, ed)
        mass = _volume_ml(p.masks[p.ed], 2, p.spacing) * 1.05
        assert 50 <= mass <= 300, (p.name, mass)
    # Same group, very different pixel sizes: pixel counts differ, volumes in mL do not.
    nor = sorted((p for p in cohort if p.group == "NOR"), key=lambda p: p.spacing[0])
    fine, coarse = nor[0], nor[-1]
    assert coarse.spacing[0] / fine.spacing[0] > 1.4
    px_fine = (fine.masks[1] == 3).sum(axis=(0, 1)).max()
    px_coarse = (coarse.masks[1] == 3).sum(axis=(0, 1)).max()
    area_fine = px_fine * fine.spacing[0] ** 2
    area_coarse = px_coarse * coarse.spacing[0] ** 2
    assert px_fine > 1.8 * px_coarse
    assert 0.6 < area_fine / area_coarse < 1.6


def test_base_and_apex_taper(cohort: list[Phantom]) -> None:
    empty = 0
    total = 0
    for p in cohort:
        for f in (p.ed, p.es):
            area = (p.masks[f] > 0).sum(axis=(0, 1))
            lv = (p.masks[f] == 3).sum(axis=(0, 1))
            total += area.size
            empty += int((area == 0).sum())
            assert lv[-1] < lv.max() / 2  # small apex
            assert (p.masks[f][..., -1] == 1).sum() == 0  # no RV at the apex
    assert empty / total < 0.15


def test_contraction_cycle() -> None:
    assert contraction(1, 5, 12) == 0.0
    assert contraction(5, 5, 12) == pytest.approx(1.0)
    values = [contraction(f, 5, 12) for f in range(1, 13)]
    assert all(0 <= v <= 1 for v in values)
    assert values[:5] == sorted(values[:5]) and values[4:] == sorted(values[4:], reverse=True)


def test_image_property_needs_all_frames(cohort: list[Phantom]) -> None:
    with pytest.raises(ValueError, match="all_frames"):
        _ = cohort[0].image


def test_image_contrast_blood_bright_myo_dark(cohort: list[Phantom]) -> None:
    for p in cohort:
        img, mask = p.images[p.ed].astype(float), p.masks[p.ed]
        lv, myo, rv = (float(img[mask == k].mean()) for k in (3, 2, 1))
        assert lv > 1.8 * myo and rv > 1.5 * myo, p.name
