"""Shell examples must parse (bash -n) and pass shellcheck (skipped where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
    } <= names
