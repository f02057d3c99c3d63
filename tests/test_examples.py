"""Shell examples must parse (bash -n) and pass shellcheck (skipped where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("examples/*.sh"), *ROOT.glob("examples/slurm/*"), ROOT / ".ci" / "run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script):
    res = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_examples_present():
    names = {p.name for p in SCRIPTS}
    assert {
        "pipeline.sh",
        "demo.sh",
        "train_seg_array.sbatch",
        "train_nvae_ddp.sbatch",
        "refine_eval_chain.sh",
        "crossval.sh",
    } <= names


@pytest.mark.slow
def test_crossval_runs_tiny_and_resumes(tmp_path):
    """examples/crossval.sh on 6 synthetic patients, 2 folds, tiny nets, 1 epoch: every output is
    made, the summary table has all rows, and a rerun skips every finished step."""
    import json
    import os

    from acdctool.config import SynthConfig
    from acdctool.stages import synth

    synth.run(SynthConfig(patients=6, seed=3), None, tmp_path / "ACDC")
    work = tmp_path / "cv"
    env = {
        **os.environ,
        "FOLDS": "2",
        "SEG_EPOCHS": "1",
        "NVAE_EPOCHS": "1",
        "DEVICE": "cpu",
        "PREP_ARGS": "--size 64",
        "SEG_ARGS": "--net-arg channels=4,8,8 --net-arg strides=2,2 --batch-size 16",
        "NVAE_ARGS": "--stem-channels 4 --groups-per-scale 1,1,1 --latent-channels 4 --warmup-steps 10 --batch-size 16"
        " --no-compile",  # compiling takes minutes
        "REFINE_ARGS": "--candidates recon,partial,structure,latent --latent-steps 0.5",
        "EVAL_ARGS": "--no-plots --workers 1",
        "PYTHON": sys.executable,
    }
    cmd = ["bash", str(ROOT / "examples" / "crossval.sh"), str(tmp_path / "ACDC" / "training"), str(work)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    outputs = [work / "slices.h5", work / "slices3.h5", work / "seg.h5", work / "seg3.h5"]
    outputs += [work / "refine" / f"{n}.h5" for n in ("nvae", "nvae3", "nvae-none", "morph")]
    outputs += [work / "eval" / n / "summary.json" for n in ("before", "nvae", "nvae3", "nvae-none", "morph")]
    outputs += [work / "runs" / f"{r}-f{k}" / "best.pt" for r in ("unet", "nvae", "nvae3") for k in (0, 1)]
    assert all(p.exists() for p in outputs), [str(p) for p in outputs if not p.exists()]
    with h5py.File(work / "seg.h5") as f:
        assert "probs" in f
    refine = json.loads(h5py.File(work / "refine" / "nvae.h5").attrs["config"])
    assert [m["label"] for m in refine["nvae"]] == ["f0", "f1"] and refine["latent_steps"] == [0.5]
    table = (work / "crossval.md").read_text()
    assert table == first.stdout.strip() + "\n" or table.strip() == first.stdout.strip()
    for label in ("gen-seg (before)", "NVAE gated", "3-gram NVAE gated", "--gate none", "morph"):
        assert label in table
    assert len(table.strip().splitlines()) == 2 + 5
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("(exists)") == 4 + 4 + 5  # prep, make-3gram ×2, gen-seg; refines; evals
    assert "already trained" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in outputs} == mtimes  # nothing redone
