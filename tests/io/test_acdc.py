from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from acdctool.errors import BadInputError, InputMissingError
from acdctool.io.acdc import PatientRef, find_patients, load_frame, read_info

INFO = "ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"


def _patient(tmp_path, info=INFO, name="patient001"):
    d = tmp_path / name
    d.mkdir()
    (d / "Info.cfg").write_text(info)
    return d


def test_read_info_parses_real_format(tmp_path):
    info = read_info(_patient(tmp_path))
    assert (info.ed, info.es, info.group, info.nb_frames, info.height, info.weight) == (1, 12, "DCM", 30, 184.0, 95.0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("ED: 1\nES: 12\nNbFrame: 30\n", "missing Group"),
        ("ED: 1\nES 12\nGroup: DCM\nNbFrame: 30\n", "malformed line"),
        ("ED: one\nES: 12\nGroup: DCM\nNbFrame: 30\n", "malformed Info.cfg"),
        ("ED: 1\nES: 12\nGroup: XYZ\nNbFrame: 30\n", "unknown Group"),
        ("ED: 1\nES: 40\nGroup: NOR\nNbFrame: 30\n", "ES frame 40 outside"),
    ],
)
def test_read_info_rejects_malformed(tmp_path, text, match):
    with pytest.raises(BadInputError, match=match):
        read_info(_patient(tmp_path, text))


def test_read_info_missing(tmp_path):
    (tmp_path / "patient001").mkdir()
    with pytest.raises(InputMissingError, match="Info.cfg"):
        read_info(tmp_path / "patient001")


def test_find_patients_layouts(synth_root, tmp_path):
    both = find_patients(synth_root)
    assert [p.source for p in both].count("testing") == 2 and len(both) == 7
    only = find_patients(synth_root / "training")
    assert {p.source for p in only} == {"training"} and len(only) == 5
    one = find_patients(synth_root / "training" / "patient001")
    assert [p.name for p in one] == ["patient001"]
    with pytest.raises(BadInputError, match="no patientNNN folders"):
        find_patients(tmp_path)
    with pytest.raises(InputMissingError):
        find_patients(tmp_path / "absent")


def test_spacing_comes_from_pixdim_not_affine(tmp_path):
    """Real ACDC headers: unit-scale sform, true spacing only in pixdim (SPEC §4)."""
    d = _patient(tmp_path)
    img = nib.Nifti1Image(np.zeros((20, 24, 3), np.int16), np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms((1.5625, 1.5625, 10.0))
    img.header.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    img.header.set_qform(None, code=0)
    nib.save(img, d / "patient001_frame01.nii.gz")
    reloaded = nib.load(d / "patient001_frame01.nii.gz")
    assert np.allclose(np.diag(reloaded.affine)[:3], [-1, -1, 1])  # the trap is in place
    frame = load_frame(PatientRef("patient001", d, "training"), 1)
    assert frame.spacing == pytest.approx((1.5625, 1.5625, 10.0))
    assert frame.mask is None and frame.image.shape == (20, 24, 3)


def test_synth_headers_read_with_true_spacing(synth_root):
    p = find_patients(synth_root / "training")[0]
    frame = load_frame(p, read_info(p.path).ed)
    assert 0.7 <= frame.spacing[0] <= 1.9 and 5 <= frame.spacing[2] <= 10
    assert frame.mask is not None and frame.mask.shape == frame.image.shape


def test_real_patient001_spacing(acdc_dir):
    p = PatientRef("patient001", acdc_dir / "patient001", "training")
    frame = load_frame(p, 1)
    assert frame.spacing == pytest.approx((1.5625, 1.5625, 10.0))
