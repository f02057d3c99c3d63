"""`acdctool export`: prep's ground truth back to NIfTI reproduces the original masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.metrics.overlap import dice

runner = CliRunner()


def test_export_ground_truth_round_trip(synth_root, tmp_path):
    from acdctool.config import PrepConfig
    from acdctool.stages import prep

    prepped = tmp_path / "s128.h5"  # prep's real size: the loss must be resampling only
    prep.run(PrepConfig(size=128), prep.Inputs(synth_root / "training"), prepped)
    out = tmp_path / "nifti"
    res = runner.invoke(app, ["export", str(prepped), "--like", str(synth_root / "training"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*_gt.nii.gz"))
    assert len(files) == 10  # 5 patients × ED/ES
    for f in files:
        original = synth_root / "training" / f.name[:10] / f.name
        a, b = nib.load(f), nib.load(original)
        assert a.shape == b.shape and np.array_equal(a.affine, b.affine)
        assert a.header.get_zooms() == b.header.get_zooms()
        assert (int(a.header["sform_code"]), int(a.header["qform_code"])) == (
            int(b.header["sform_code"]),
            int(b.header["qform_code"]),
        )
        scores = dice(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        assert min(s.value for s in scores.values()) >= 0.95, (f.name, scores)


def test_export_refuses_wrong_folder(prepped, tmp_path):
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["export", str(prepped), "--like", str(tmp_path / "empty"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 65 and not (tmp_path / "o").exists()


def test_export_real_patient001(acdc_dir, tmp_path):
    from acdctool.config import PrepConfig
    from acdctool.stages import prep

    h5 = tmp_path / "p1.h5"
    prep.run(PrepConfig(), prep.Inputs(acdc_dir / "patient001"), h5)
    out = tmp_path / "nifti"
    res = runner.invoke(app, ["export", str(h5), "--like", str(acdc_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    a = nib.load(out / "patient001_frame01_gt.nii.gz")
    b = nib.load(acdc_dir / "patient001" / "patient001_frame01_gt.nii.gz")
    assert np.array_equal(a.affine, b.affine) and a.header.get_zooms() == b.header.get_zooms()
    scores = dice(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    assert min(s.value for s in scores.values()) >= 0.95
