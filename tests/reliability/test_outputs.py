"""No output may delete or replace an input; final moves never replace what appeared meanwhile;
temps of killed processes are removed by the next write; a full disk is one line."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.errors import EX_CANTCREAT, OutputError
from acdctool.io.atomic import atomic_dir, atomic_path, check_overlap, stale_temps
from acdctool.io.locks import HOST

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_overlap_of_files_and_folders(tmp_path):
    (tmp_path / "x").mkdir()
    src = tmp_path / "x" / "refined.h5"
    src.write_bytes(b"input")
    (tmp_path / "link.h5").symlink_to(src)
    os.link(src, tmp_path / "hard.h5")
    refused = {
        "the input itself": tmp_path / "x" / "refined.h5",
        "a symlink to it": tmp_path / "link.h5",
        "a hard link of it": tmp_path / "hard.h5",
        "the folder holding it": tmp_path / "x",
        "a folder above it": tmp_path,
    }
    for what, out in refused.items():
        with pytest.raises(OutputError, match="input"):
            check_overlap(out, [src])
        assert src.read_bytes() == b"input", what
    acdc = tmp_path / "ACDC" / "patient001"
    acdc.mkdir(parents=True)
    (acdc / "frame.nii.gz").write_bytes(b"image")
    with pytest.raises(OutputError, match="inside the input folder"):
        check_overlap(acdc / "frame.nii.gz", [acdc])  # an existing file of an input tree
    check_overlap(acdc / "new.h5", [acdc])  # a new file inside an input folder is fine
    check_overlap(tmp_path / "elsewhere.h5", [src, acdc, None, tmp_path / "missing.h5"])


def test_eval_report_folder_holding_its_input_is_refused(rh, seg_file_factory, tmp_path):
    """`eval x/refined.h5 -o x --force` deleted its input."""
    (tmp_path / "x").mkdir()
    src = seg_file_factory(lambda gt, idx: gt, name="x/refined.h5")
    before = rh.tree_hash(tmp_path / "x")
    res = invoke("eval", src, "-o", tmp_path / "x", "--force", "--no-plots", "-q")
    assert res.exit_code == EX_CANTCREAT and "holds the input" in res.output, res.output
    assert rh.tree_hash(tmp_path / "x") == before and not rh.temps(tmp_path)


def test_export_refuses_to_replace_the_like_folder(rh, seg_file_factory, synth_root, tmp_path):
    """`export seg.h5 --like ACDC -o ACDC --force` replaced the ACDC folder."""
    acdc = tmp_path / "ACDC"
    shutil.copytree(synth_root / "training", acdc)
    seg = seg_file_factory(lambda gt, idx: gt)
    before = rh.tree_hash(acdc)
    for out in (acdc, acdc / "patient001"):
        res = invoke("export", seg, "--like", acdc, "-o", out, "--force", "-q")
        assert res.exit_code == EX_CANTCREAT, res.output
    assert rh.tree_hash(acdc) == before and not rh.temps(tmp_path)


def test_prep_refuses_to_overwrite_an_input_nifti(rh, acdc_copy, tmp_path):
    """`prep -o <an input NIfTI> --force` overwrote it."""
    target = acdc_copy / "patient001" / "patient001_frame01.nii.gz"
    before = rh.tree_hash(acdc_copy)
    res = invoke("prep", acdc_copy, "-o", target, "--force", "-q")
    assert res.exit_code == EX_CANTCREAT and "inside the input folder" in res.output, res.output
    assert rh.tree_hash(acdc_copy) == before and not rh.temps(acdc_copy)


def test_gen_seg_refuses_to_overwrite_its_model(rh, prepped, tmp_path):
    """`gen-seg -o <its --model> --force` overwrote the model."""
    model = rh.unet_checkpoint(tmp_path / "run" / "best.pt", prepped, fold=0)
    before = rh.tree_hash(model)
    res = invoke("gen-seg", prepped, "-m", model, "-o", model, "--force", "--device", "cpu", "-q")
    assert res.exit_code == EX_CANTCREAT and "is also an input" in res.output, res.output
    assert rh.tree_hash(model) == before and not rh.temps(tmp_path)


def test_a_folder_that_appears_during_the_run_is_never_replaced(rh, tmp_path):
    out = tmp_path / "report"
    with pytest.raises(OutputError, match="appeared while writing"):
        with atomic_dir(out) as tmp:
            (tmp / "new.csv").write_text("new")
            out.mkdir()  # another process made it meanwhile
            (out / "theirs.csv").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.csv"] and not rh.temps(tmp_path)
    with atomic_dir(out, force=True) as tmp:  # with --force it is replaced, in one swap
        (tmp / "new.csv").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.csv"] and not rh.temps(tmp_path)


def test_a_file_that_appears_during_the_run_is_never_replaced(rh, tmp_path):
    out = tmp_path / "seg.h5"
    with pytest.raises(OutputError, match="appeared while writing"):
        with atomic_path(out) as tmp:
            tmp.write_text("new")
            out.write_text("theirs")
    assert out.read_text() == "theirs" and not rh.temps(tmp_path)


def test_temps_of_killed_processes_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        out = tmp_path / "seg.h5"
        stale_file = tmp_path / f".seg.h5.{HOST}-{dead.pid}.abcd1234.tmp"
        stale_dir = tmp_path / f".seg.h5.{HOST}-{dead.pid}.efgh5678.tmp"
        live_file = tmp_path / f".seg.h5.{HOST}-{live.pid}.ijkl9012.tmp"
        other_host = tmp_path / f".seg.h5.otherhost-{dead.pid}.mnop3456.tmp"
        foreign = tmp_path / ".seg.h5.mine.tmp"
        for p in (stale_file, live_file, other_host, foreign):
            p.write_text("partial")
        stale_dir.mkdir()
        (stale_dir / "part").write_text("x")
        assert stale_temps(out) == sorted([stale_file, stale_dir])
        with atomic_path(out) as tmp:
            tmp.write_text("done")
        assert out.read_text() == "done"
        assert not stale_file.exists() and not stale_dir.exists()  # the dead writer's leftovers
        assert live_file.exists() and other_host.exists() and foreign.exists()  # never a live or unknown one
    finally:
        live.kill()
        live.wait()


def test_full_disk_is_one_line_and_leaves_nothing(rh, seg_file_factory, tmp_path, monkeypatch):
    """ENOSPC while writing: a clean OutputError (exit 73), no temp, no traceback."""
    from acdctool.io import slices

    seg = seg_file_factory(lambda gt, idx: gt)

    def full(tmp, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(slices, "write_bytes", full)
    res = invoke("refine", seg, "--method", "morph", "-o", tmp_path / "r.h5", "-q")
    assert res.exit_code == EX_CANTCREAT, res.output
    assert "no space left on device" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "r.h5").exists() and not rh.temps(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_full_disk_on_a_real_tiny_file_system(prepped, tmp_path):
    """HDF5 used to print tracebacks and segfault on a full disk; torch.save to say nothing useful."""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        for argv in (
            ["make-3gram", prepped, "-o", full / "x.h5", "--source", "gt"],
            ["eval", prepped, "-o", full / "rep"],
        ):
            res = subprocess.run(
                [sys.executable, "-m", "acdctool", *map(str, argv), "-q"],
                capture_output=True,
                text=True,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
            assert res.returncode == EX_CANTCREAT, res.stderr
            assert "no space left on device" in res.stderr and res.stderr.count("\n") == 1, res.stderr
            assert list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", str(full)])


def test_checkpoint_save_on_a_full_disk(rh, tmp_path, monkeypatch):
    import torch

    from acdctool.io import checkpoint

    def full(tmp, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_bytes", full)
    previous = tmp_path / "last.pt"
    previous.write_bytes(b"previous checkpoint")
    with pytest.raises(OutputError, match="no space left"):
        checkpoint.save_checkpoint(
            previous,
            kind="seg-model",
            model_name="unet",
            model_args={},
            state_dict={"w": torch.zeros(2)},
            config={},
            data={},
        )
    assert previous.read_bytes() == b"previous checkpoint" and not rh.temps(tmp_path)
