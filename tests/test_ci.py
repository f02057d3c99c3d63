"""`.ci/run` and the README stay in step: CI runs the README's test command (install, then pytest)
after the static checks that the README's Development section lists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = [
    "python3 -m ruff check src tests bench scripts",
    "python3 -m ruff format --check src tests bench scripts",
    "python3 -m mypy src/acdctool",
]


def _readme_test_command() -> str:
    quick = ROOT.joinpath("README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    (command,) = [b for b in blocks if "pytest" in b]
    return command.strip()


def test_ci_runs_the_static_checks_then_the_readme_test_command():
    lines = [ln.strip() for ln in ROOT.joinpath(".ci", "run").read_text().splitlines()]
    install, pytest_cmd = _readme_test_command().rsplit(" && ", 1)
    assert pytest_cmd == "python3 -m pytest -q"
    order = [lines.index(install), *(lines.index(c) for c in CHECKS), lines.index(pytest_cmd)]
    assert order == sorted(order)


def test_readme_development_lists_the_checks_and_lanes():
    dev = ROOT.joinpath("README.md").read_text().split("## Development", 1)[1]
    for text in [*CHECKS, '-m ""', "-m slow", "-m gpu", "-m real", "ACDCTOOL_ACDC_DIR"]:
        assert text in dev, text
