"""Typed one-line errors instead of "unexpected": damaged files, weights, headers and arguments."""

from __future__ import annotations

import gzip
import shutil
import struct

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.config import GenSegConfig, RefineConfig
from acdctool.errors import EX_DATAERR, BadInputError, ConfigError, signal_exit_code
from acdctool.io.checkpoint import SCHEMA_VERSION, load_checkpoint, weights_sha256
from acdctool.io.slices import SliceFile

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_of_a_zero_row_file(seg_file_factory, tmp_path):
    from acdctool.io.slices import SliceWriter

    src = seg_file_factory(lambda gt, idx: gt)
    with SliceFile(src) as f:
        index, shape = f.index.iloc[:0], f.shape
    empty = tmp_path / "empty.h5"
    arrays = {n: ("uint8" if n != "image" else "float32", ()) for n in ("image", "gt", "pred")}
    with SliceWriter(empty, kind="seg", config={}, provenance={}, shape=shape, arrays=arrays) as w:
        w.append(index, **{n: np.zeros((0, *shape), d) for n, (d, _) in arrays.items()})
    res = invoke("eval", empty, "-o", tmp_path / "rep", "-q")
    assert res.exit_code == EX_DATAERR and "has no rows" in res.output and not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"config": "{not json"}, "malformed 'config' attribute"),
        ({"provenance": "[1, 2]"}, "malformed 'provenance' attribute"),
        ({"schema_version": "abc"}, "malformed 'schema_version' attribute"),
    ],
)
def test_malformed_attributes(prepped, tmp_path, attrs, message):
    bad = tmp_path / "bad.h5"
    shutil.copy(prepped, bad)
    with h5py.File(bad, "r+") as h5:
        for key, value in attrs.items():
            h5.attrs[key] = value
    with pytest.raises(BadInputError, match=message):
        SliceFile(bad)


def test_a_corrupt_chunk_names_the_file_and_the_row(prepped, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(prepped, bad)
    with h5py.File(bad, "r") as h5:
        info = h5["gt"].id.get_chunk_info(4)
    with open(bad, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    with SliceFile(bad) as f:
        assert f.read("gt", [0, 1]).shape[0] == 2  # the other rows still read
        with pytest.raises(BadInputError, match=rf"{bad}: array 'gt' is corrupt at row 4 \(patient"):
            f.read("gt")
    res = invoke("info", bad)
    assert res.exit_code == EX_DATAERR and "is corrupt at row 4" in res.output and res.output.count("\n") == 1


def test_a_flipped_weight_is_refused_by_its_checksum(rh, prepped, tmp_path):
    """A flipped weight loaded silently and produced 3.7e37 logits."""
    path = rh.unet_checkpoint(tmp_path / "m.pt", prepped)
    raw = torch.load(path, weights_only=True)
    assert raw["schema_version"] == SCHEMA_VERSION == 2 and raw["weights_sha256"] == weights_sha256(raw["state_dict"])
    key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    raw["state_dict"][key].view(-1)[0] = 3.7e37
    torch.save(raw, tmp_path / "flipped.pt")
    with pytest.raises(BadInputError, match="weights do not match their checksum"):
        load_checkpoint(tmp_path / "flipped.pt")
    res = invoke("gen-seg", prepped, "-m", tmp_path / "flipped.pt", "-o", tmp_path / "g.h5", "-q")
    assert res.exit_code == EX_DATAERR and "checksum" in res.output and res.output.count("\n") == 1


def test_schema_1_checkpoints_still_load(rh, prepped, tmp_path):
    path = rh.unet_checkpoint(tmp_path / "m.pt", prepped)
    raw = torch.load(path, weights_only=True)
    raw["schema_version"] = 1
    del raw["weights_sha256"]
    torch.save(raw, tmp_path / "old.pt")
    ck = load_checkpoint(tmp_path / "old.pt")
    assert ck.model_name == "unet" and ck.state_dict.keys() == raw["state_dict"].keys()


def test_unknown_model_names_and_weights_that_do_not_fit(rh, prepped, seg_file_factory, tmp_path):
    from acdctool.stages import gen_seg, refine

    path = rh.unet_checkpoint(tmp_path / "m.pt", prepped)
    raw = torch.load(path, weights_only=True)
    raw["model"]["name"] = "vnet"
    torch.save(raw, tmp_path / "vnet.pt")
    with pytest.raises(BadInputError, match="unknown model 'vnet'"):
        load_checkpoint(tmp_path / "vnet.pt")
    # Weights of another shape under a valid checksum: gen-seg and refine name the file.
    wide = rh.unet_checkpoint(tmp_path / "wide.pt", prepped, channels=(4, 8, 32))
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = torch.load(wide, weights_only=True)["state_dict"]
    raw["weights_sha256"] = weights_sha256(raw["state_dict"])
    torch.save(raw, tmp_path / "misfit.pt")
    with pytest.raises(BadInputError, match=rf"{tmp_path / 'misfit.pt'}: weights do not fit"):
        gen_seg.run(GenSegConfig(device="cpu"), gen_seg.Inputs(prepped, (tmp_path / "misfit.pt",)), tmp_path / "g.h5")
    nvae = rh.nvae_checkpoint(tmp_path / "n.pt", latent_channels=8)  # weights of a wider NVAE than its args
    seg = seg_file_factory(lambda gt, idx: gt)
    with pytest.raises(BadInputError, match=rf"{nvae}: weights do not fit"):
        refine.run(RefineConfig(device="cpu"), refine.Inputs(seg, nvae), tmp_path / "r.h5")
    assert not (tmp_path / "g.h5").exists() and not (tmp_path / "r.h5").exists()


@pytest.mark.parametrize("arg", ["channels=abc", "dropout=2", "dropout=nan", "kernel_size=2", "strides=0,0"])
def test_net_arg_type_errors_are_usage_errors(arg):
    from acdctool.models.seg import check_buildable, parse_net_args, resolve_args

    with pytest.raises(ConfigError, match="--net-arg"):
        args = resolve_args("unet", {"channels": (4, 8, 16), **parse_net_args([arg])})
        check_buildable("unet", args, (32, 32))


def test_pixdim_zero_is_refused(acdc_copy):
    """nibabel silently replaces a zero voxel size by 1 mm: every mm and mL would be wrong."""
    from acdctool.io.acdc import load_nifti

    path = acdc_copy / "patient001" / "patient001_frame01.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1]
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(BadInputError, match=r"voxel size \(0\.0, .*\) mm in pixdim is zero"):
        load_nifti(path)


def test_signal_exit_codes_follow_the_shell():
    assert (signal_exit_code(15), signal_exit_code(1), signal_exit_code(2), signal_exit_code(None)) == (
        143,
        129,
        130,
        130,
    )
