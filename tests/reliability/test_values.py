"""Non-finite and out-of-range values: options, prep's NaN voxels, training data, validation, refine."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from acdctool import config as cfg
from acdctool.cli.app import app
from acdctool.errors import EX_DATAERR, EX_USAGE, BadInputError, ConfigError, TrainingDivergedError

runner = CliRunner()
CONFIGS = [
    c
    for name, c in vars(cfg).items()
    if name.endswith("Config") and dataclasses.is_dataclass(c) and isinstance(c, type)
]
FLOATS = [(c, f.name) for c in CONFIGS for f in dataclasses.fields(c) if str(f.type) in ("float", "tuple[float, ...]")]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("cls, name", FLOATS, ids=[f"{c.__name__}.{n}" for c, n in FLOATS])
def test_every_float_option_refuses_non_finite_values(cls, name, bad):
    default = getattr(cls(), name)
    value = tuple(bad for _ in default) or (bad,) if isinstance(default, tuple) else bad
    with pytest.raises(ConfigError, match=f"{cfg.option_name(name)} must be a finite number"):
        cls(**{name: value})


@pytest.mark.parametrize(
    "cls, kwargs, option",
    [
        (cfg.TrainSegConfig, {"epochs": 10**20}, "--epochs"),
        (cfg.TrainSegConfig, {"batch_size": 99999999999}, "--batch-size"),
        (cfg.TrainNvaeConfig, {"seed": 2**64}, "--seed"),
        (cfg.PrepConfig, {"seed": -1}, "--seed"),
        (cfg.RefineConfig, {"samples": 10**9}, "--samples"),
        (cfg.SynthConfig, {"frames": 10**8}, "--frames"),
        (cfg.RefineConfig, {"samples": "3"}, "--samples"),
        (cfg.TrainSegConfig, {"augment": 1}, "--augment"),
    ],
)
def test_integer_options_have_types_and_bounds(cls, kwargs, option):
    with pytest.raises(ConfigError, match=option):
        cls(**kwargs)


def test_refine_temperature_nan_is_a_usage_error(tmp_path):
    """`refine --temperature nan` replaced every slice by background and reported success."""
    res = invoke("refine", tmp_path / "seg.h5", "-o", tmp_path / "r.h5", "--temperature", "nan")
    assert res.exit_code == EX_USAGE and "--temperature must be a finite number" in res.output
    res = invoke("train-seg", tmp_path / "s.h5", "-o", tmp_path / "run", "--epochs", "1e20")
    assert res.exit_code == EX_USAGE


def test_refine_never_empties_a_slice_that_had_structures():
    from acdctool.stages.refine import closest_valid, gate

    m = np.zeros((2, 32, 32), np.uint8)
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    m[:, r < 10], m[:, r < 6] = 2, 3
    m[:, 0:2, 0:2] = 3  # a stray LV fragment: anatomically invalid
    spacing = np.ones((2, 2))
    empty = np.zeros_like(m)  # anatomically "valid", and what NaN logits decode to
    assert closest_valid(m, [empty], spacing).tolist() == [-1, -1]
    out, reasons, _, _ = gate(m, None, spacing, lambda x, c: [empty[: len(x)]], cfg.RefineConfig(method="morph"))
    assert reasons == ["no-valid-candidate"] * 2 and (out == m).all()
    blank = np.zeros_like(m)  # an empty input may stay empty
    assert closest_valid(blank, [empty], spacing).tolist() == [-1, -1]


def _nifti_set(path, fn):
    import nibabel as nib

    img = nib.load(str(path))
    data = fn(np.asanyarray(img.dataobj).astype(np.float32))
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, img.affine, header), str(path))


def test_prep_refuses_nan_inside_the_crop_naming_file_and_slice(acdc_copy, tmp_path):
    image = acdc_copy / "patient002" / "patient002_frame01.nii.gz"

    def centre_nan(a):
        a[a.shape[0] // 2, a.shape[1] // 2, 1] = np.nan
        return a

    _nifti_set(image, centre_nan)
    res = invoke("prep", acdc_copy, "-o", tmp_path / "s.h5", "--size", 32, "-q")
    assert res.exit_code == EX_DATAERR, res.output
    assert "patient002_frame01.nii.gz: 1 NaN/inf voxels inside the crop, first in slice 1" in res.output
    assert not (tmp_path / "s.h5").exists()
    res = invoke("prep", acdc_copy, "-o", tmp_path / "s.h5", "--size", 32, "--nonfinite", "zero", "-q")
    assert res.exit_code == 0, res.output
    from acdctool.io.slices import SliceFile

    with SliceFile(tmp_path / "s.h5") as f:
        assert np.isfinite(f.read("image")).all() and f.config["nonfinite"] == "zero"


def test_prep_ignores_nan_outside_the_crop(acdc_copy, tmp_path):
    def corner_nan(a):
        a[0, 0, :] = np.nan
        return a

    _nifti_set(acdc_copy / "patient002" / "patient002_frame01.nii.gz", corner_nan)
    res = invoke("prep", acdc_copy, "-o", tmp_path / "s.h5", "--size", 32, "-q")
    assert res.exit_code == 0, res.output
    from acdctool.io.slices import SliceFile

    with SliceFile(tmp_path / "s.h5") as f:
        assert np.isfinite(f.read("image")).all()


def test_training_data_with_bad_values_is_refused_naming_the_row(rh, prepped, tmp_path):
    from acdctool.data.loader import SliceDataset

    labels = rh.rewrite_prep(prepped, tmp_path / "labels.h5", "gt", lambda a: np.where(a == 3, 7, a), row=5)
    with pytest.raises(BadInputError, match=r"'gt' row 5 \(patient\d+ E[DS] slice \d+\) has labels outside 0\.\.3"):
        SliceDataset(labels, arrays=("image", "gt"))
    nan = rh.rewrite_prep(prepped, tmp_path / "nan.h5", "image", lambda a: a * np.nan, row=3)
    for in_memory in (True, False):
        with pytest.raises(BadInputError, match="'image' row 3 .* NaN or infinite"):
            SliceDataset(nan, arrays=("image", "gt"), in_memory=in_memory)


def test_nan_in_validation_stops_training(prepped, tmp_path, monkeypatch):
    from acdctool.stages import train_seg
    from acdctool.train import tasks

    class NanValidation(tasks.SegTask):
        def val_summary(self, sums):
            return {**super().val_summary(sums), "loss": float("nan")}

    monkeypatch.setattr(train_seg, "SegTask", NanValidation)
    config = cfg.TrainSegConfig(net_args=("channels=4,8,16",), fold=0, epochs=2, batch_size=8, device="cpu")
    with pytest.raises(TrainingDivergedError, match="validation of epoch 1 gave non-finite val_loss=nan"):
        train_seg.run(config, train_seg.Inputs(prepped), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was saved for that epoch, and we made the folder
