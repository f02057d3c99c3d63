"""`acdctool prep`, `info`, `synth` through the CLI: exit codes, outputs, and every bad input."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version_and_help_list_commands():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.startswith("acdctool ")
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("synth", "prep", "info"):
        assert cmd in res.stdout


def test_synth_prep_info_chain(tmp_path):
    res = invoke("synth", tmp_path / "ACDC", "--patients", 5, "--seed", 3)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "ACDC")
    out = tmp_path / "s.h5"
    res = invoke("prep", tmp_path / "ACDC", "-o", out, "--size", 32, "--folds", 2)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out) and out.is_file()
    res = invoke("info", out, "--json")
    assert res.exit_code == 0
    s = json.loads(res.stdout)
    assert s["patients"] == 5 and s["kind"] == "prep" and s["shape"] == [32, 32]
    assert sum(s["patients_per_split"].values()) == 5 and set(s["folds"]) == {"0", "1"}
    assert s["config"]["size"] == 32 and s["provenance"]["inputs"] == [str((tmp_path / "ACDC").resolve())]
    res = invoke("info", out)
    assert res.exit_code == 0 and "patients" in res.stdout


def _nii(path, data, zooms=(1.5, 1.5, 10.0)):
    img = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms(zooms)
    nib.save(img, path)


def _break_missing_info(d):
    (d / "patient001" / "Info.cfg").unlink()
    return 66, "Info.cfg"


def _break_malformed_info(d):
    (d / "patient001" / "Info.cfg").write_text("ED: 1\nES: x\nGroup: NOR\nNbFrame: 12\n")
    return 65, "Info.cfg"


def _break_missing_frame(d):
    next((d / "patient002").glob("*_frame01.nii.gz")).unlink()
    return 66, "patient002_frame01.nii.gz"


def _break_truncated(d):
    f = d / "patient003" / "patient003_frame01.nii.gz"
    f.write_bytes(f.read_bytes()[:200])
    return 65, "patient003_frame01.nii.gz"


def _break_not_gzip(d):
    f = d / "patient003" / "patient003_frame01.nii.gz"
    f.write_bytes(b"plain text, not gzip" * 20)
    return 65, "patient003_frame01.nii.gz"


def _break_shape_mismatch(d):
    f = d / "patient004" / "patient004_frame01_gt.nii.gz"
    _nii(f, np.zeros((10, 10, 2), np.uint8))
    return 65, "differs from image shape"


def _break_labels(d):
    f = d / "patient005" / "patient005_frame01_gt.nii.gz"
    img = nib.load(f)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine, img.header), f)
    return 65, "labels outside 0..3"


BREAKERS = [
    _break_missing_info,
    _break_malformed_info,
    _break_missing_frame,
    _break_truncated,
    _break_not_gzip,
    _break_shape_mismatch,
    _break_labels,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[7:])
def test_bad_patient_fails_cleanly(acdc_copy, tmp_path, breaker):
    code, needle = breaker(acdc_copy)
    out = tmp_path / "out" / "s.h5"
    res = invoke("prep", acdc_copy, "-o", out, "--size", 32)
    assert res.exit_code == code, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()
    if out.parent.exists():  # no temp file left behind either
        assert not any(out.parent.iterdir())


@pytest.mark.parametrize("breaker", [_break_truncated, _break_missing_info], ids=["truncated", "no_info"])
def test_skip_bad_continues_and_lists(acdc_copy, tmp_path, breaker):
    breaker(acdc_copy)
    out = tmp_path / "s.h5"
    res = invoke("prep", acdc_copy, "-o", out, "--size", 32, "--skip-bad")
    assert res.exit_code == 0, res.output
    assert "skipped patient00" in res.stderr
    res = invoke("info", out, "--json")
    assert json.loads(res.stdout)["patients"] == 4


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    res = invoke("prep", tmp_path / "empty", "-o", tmp_path / "s.h5")
    assert res.exit_code == 65 and "no patientNNN folders" in res.stderr
    res = invoke("prep", tmp_path / "absent", "-o", tmp_path / "s.h5")
    assert res.exit_code == 66
    assert not (tmp_path / "s.h5").exists()


def test_existing_output_needs_force(synth_root, tmp_path):
    out = tmp_path / "s.h5"
    out.write_bytes(b"precious")
    res = invoke("prep", synth_root / "training", "-o", out, "--size", 32)
    assert res.exit_code == 73 and "--force" in res.stderr
    assert out.read_bytes() == b"precious"
    res = invoke("prep", synth_root / "training", "-o", out, "--size", 32, "--force")
    assert res.exit_code == 0 and out.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_unwritable_output_folder(synth_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder should be: cannot be created, even as root
    res = invoke("prep", synth_root / "training", "-o", blocker / "s.h5", "--size", 32)
    assert res.exit_code == 73 and "cannot create output folder" in res.stderr


def test_bad_options_are_usage_errors(synth_root, tmp_path):
    res = invoke("prep", synth_root / "training", "-o", tmp_path / "s.h5", "--roi", "box")
    assert res.exit_code == 2 and "--roi" in res.stderr


def test_info_on_wrong_file(tmp_path):
    f = tmp_path / "x.h5"
    with gzip.open(f, "wb") as fh:
        fh.write(b"nope")
    res = invoke("info", f)
    assert res.exit_code == 65 and "not an HDF5 file" in res.stderr
