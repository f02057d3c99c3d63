"""SIGTERM, SIGHUP and SIGINT stop every command like Ctrl-C (one line, 128 + N, no temp, no worker
left, previous output intact); a temp left by SIGKILL is removed by the next run."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _wait_for_temp(folder: Path, name: str, proc, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in os.listdir(folder)):
            return True
        time.sleep(0.02)
    return False


def _noisy(seg_file_factory, name="big.h5"):
    rng = np.random.default_rng(0)
    return seg_file_factory(
        lambda gt, idx: np.where(rng.random(gt.shape) < 0.02, rng.integers(0, 4, gt.shape), gt).astype(np.uint8),
        name=name,
    )


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_eval_stops_cleanly_and_ends_its_workers(rh, seg_file_factory, tmp_path, sig, code):
    """eval's worker processes outlived their parent by 14 minutes."""
    seg = _noisy(seg_file_factory)
    report = tmp_path / "report"
    report.mkdir()
    (report / "previous.txt").write_text("the previous report")
    before = rh.tree_hash(report)
    proc = rh.popen(rh.acdctool_cmd("eval", seg, "-o", report, "--workers", 2, "--force", "-q"), tmp_path)
    assert _wait_for_temp(tmp_path, "report", proc), "eval finished before the signal"
    time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip() == f"acdctool: error: interrupted ({signal.Signals(sig).name})" and out == ""
    assert rh.tree_hash(report) == before and not rh.temps(tmp_path)
    deadline = time.time() + 5
    while rh.session_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert rh.session_alive(proc.pid) == []


def test_prep_sigterm_then_sigkill_leftover_removed_by_the_next_run(rh, synth_root, tmp_path):
    out = tmp_path / "slices.h5"
    argv = rh.acdctool_cmd("prep", synth_root, "-o", out, "--size", 64, "--workers", 2, "-q")
    proc = rh.popen(argv, tmp_path)
    assert _wait_for_temp(tmp_path, "slices.h5", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.count("\n") == 1 and not rh.temps(tmp_path) and not out.exists(), err
    proc = rh.popen(argv, tmp_path)
    assert _wait_for_temp(tmp_path, "slices.h5", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # nothing can clean up after SIGKILL ...
    proc.communicate(timeout=60)
    left = rh.temps(tmp_path)
    assert len(left) == 1 and f"-{proc.pid}." in left[0]  # ... but the temp says whose it was
    proc = rh.popen(argv, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.exists() and not rh.temps(tmp_path)  # the next run removed the dead writer's temp


def test_training_sigterm_saves_last_and_a_rerun_resumes(rh, prepped, tmp_path):
    run = tmp_path / "run"
    argv = rh.acdctool_cmd(
        "train-seg",
        prepped,
        "-o",
        run,
        "--fold",
        0,
        "--epochs",
        500,
        "--net-arg",
        "channels=4,8,16",
        "--batch-size",
        8,
        "--device",
        "cpu",
        "-q",
    )
    proc = rh.popen(argv, tmp_path)
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 129 and "interrupted (SIGHUP)" in err and "--resume" in err, err
    assert (run / "last.pt").exists() and not (run / ".lock").exists() and not rh.temps(tmp_path)
    shutil.rmtree(run)
