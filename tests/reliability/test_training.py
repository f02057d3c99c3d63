"""Run folders: one writer at a time (lock, stale lock taken over), --force keeps the previous run
until the new one's first checkpoint and puts it back when the new run fails or is killed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acdctool.config import TrainSegConfig
from acdctool.errors import EX_CANTCREAT, OutputError, TrainingDivergedError
from acdctool.io.checkpoint import load_checkpoint
from acdctool.io.locks import HOST, FolderLock
from acdctool.stages import train_seg
from acdctool.train.run_dir import BACKUP, RUN_FILES, prepare_run_dir

TINY = ("channels=4,8,16",)
CFG = TrainSegConfig(net_args=TINY, fold=0, epochs=1, batch_size=8, device="cpu", augment=False)


def _train(slices: Path, run: Path, **kw) -> train_seg.Result:
    config = dataclasses.replace(CFG, **kw.pop("config", {}))
    return train_seg.run(config, train_seg.Inputs(slices), run, **kw)


@pytest.fixture(scope="module")
def previous_run(prepped, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("prev") / "run"
    assert _train(prepped, run).status == "completed"
    return run


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_a_second_process_on_a_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from acdctool.io.locks import FolderLock;"
            "FolderLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"in use by PID {holder.pid} on {HOST}"):
            prepare_run_dir(run, resume=True, force=False)
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is stale, taken over with a note.
    folder = prepare_run_dir(run, resume=True, force=False)
    try:
        assert folder.notes and "stale lock" in folder.notes[0] and str(holder.pid) in folder.notes[0]
        assert json.loads((run / ".lock").read_text())["pid"] != holder.pid
    finally:
        folder.release()
    assert not (run / ".lock").exists()


@pytest.mark.slow
def test_two_concurrent_train_seg_one_is_refused(rh, prepped, tmp_path):
    """Two train-seg on one new folder both printed "done" and one result was lost."""
    argv = rh.acdctool_cmd(
        "train-seg",
        prepped,
        "-o",
        "run",
        "--fold",
        0,
        "--epochs",
        500,
        "--net-arg",
        rh.TINY[0],
        "--batch-size",
        8,
        "--device",
        "cpu",
        "-q",
    )
    first = rh.popen(argv, tmp_path)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "metrics.csv").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    second = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    first.terminate()
    out, err = first.communicate(timeout=120)
    assert second.returncode == EX_CANTCREAT and f"in use by PID {first.pid}" in second.stderr, second.stderr
    assert first.returncode == 143, err  # the first run was not disturbed: it stopped on our SIGTERM
    assert load_checkpoint(tmp_path / "run" / "last.pt").train["epoch"] >= 1
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_forced_run_that_fails_keeps_the_previous_run(rh, prepped, previous_run, tmp_path):
    """--force deleted best.pt/last.pt first, and a run that then failed left an empty folder."""
    run = _copy(previous_run, tmp_path / "run")
    before = rh.tree_hash(run)
    with pytest.raises(TrainingDivergedError):
        _train(prepped, run, force=True, config={"lr": 1e30})
    assert rh.tree_hash(run) == before and not (run / BACKUP).exists() and not (run / ".lock").exists()


def test_a_forced_run_replaces_the_previous_only_after_its_first_checkpoint(prepped, previous_run, tmp_path):
    run = _copy(previous_run, tmp_path / "run")
    old_last = (run / "last.pt").read_bytes()
    seen = []

    def stop(epoch: int, step: int) -> bool:
        # Before the first checkpoint: the previous run is set aside, whole.
        seen.append(sorted(p.name for p in (run / BACKUP).iterdir()) if (run / BACKUP).exists() else None)
        return step == 1

    result = _train(prepped, run, force=True, should_stop=stop)
    assert result.status == "interrupted" and seen[0] == sorted(n for n in RUN_FILES if (previous_run / n).exists())
    assert not (run / BACKUP).exists() and (run / "last.pt").read_bytes() != old_last
    assert load_checkpoint(run / "last.pt").train["step"] == 1


def test_a_killed_forced_run_is_undone_by_the_next_command(rh, previous_run, tmp_path):
    run = _copy(previous_run, tmp_path / "run")
    before = rh.tree_hash(run)
    folder = prepare_run_dir(run, resume=False, force=True)
    assert folder.backup is not None and not (run / "last.pt").exists()
    (run / "best.pt").write_bytes(b"half a new run")  # what the killed run got to write
    folder.lock.release()  # the process is gone: no rollback ran
    again = prepare_run_dir(run, resume=True, force=False)
    try:
        assert any("restored the previous run" in n for n in again.notes)
        assert again.resume_from == run / "last.pt"
    finally:
        again.release()
    assert rh.tree_hash(run) == before


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(previous_run, tmp_path):
    run = _copy(previous_run, tmp_path / "run")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "host": HOST}))
    assert FolderLock(run).in_use() is None
    folder = prepare_run_dir(run, resume=True, force=False)
    folder.release()
    assert f"stale lock of PID {dead.pid}" in folder.notes[0]


def test_run_files_may_not_be_inputs(rh, prepped, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(prepped, run / "last.pt")  # the slice file, under a run file's name
    with pytest.raises(OutputError, match="is also an input"):
        _train(run / "last.pt", run, force=True)
    assert rh.tree_hash(run / "last.pt") == rh.tree_hash(prepped)
