"""Man pages and completion scripts must match what the app generates now."""

from __future__ import annotations

from pathlib import Path

import pytest

from acdctool import __version__
from acdctool.cli.manpage import SHELLS, completion_script, render_all

ROOT = Path(__file__).resolve().parents[2]
HINT = "out of date: run `python scripts/gen_docs.py` and commit man/ and completions/"


def test_man_pages_up_to_date():
    pages = render_all(__version__)
    on_disk = {p.name for p in (ROOT / "man").glob("*.1")}
    assert on_disk == set(pages), HINT
    for name, text in pages.items():
        assert (ROOT / "man" / name).read_text() == text, f"man/{name} {HINT}"
    main = pages["acdctool.1"]
    assert ".SH EXIT STATUS" in main and "\\fB73\\fR" in main
    for name in pages:
        if name != "acdctool.1":
            assert ".SH EXAMPLE" in pages[name], f"{name}: its --help needs an 'Example:' line"


@pytest.mark.parametrize("shell", SHELLS)
def test_completions_up_to_date(shell):
    text = completion_script(shell)
    assert "_ACDCTOOL_COMPLETE" in text
    assert (ROOT / "completions" / f"acdctool.{shell}").read_text() == text, HINT


def test_exit_codes_come_from_errors_py():
    """README, --help and the man page all show errors.EXIT_CODES (scripts/gen_docs.py writes the README block)."""
    from typer.testing import CliRunner

    from acdctool.cli.app import app
    from acdctool.cli.manpage import readme_exit_codes
    from acdctool.errors import EXIT_CODES, exit_codes_line

    assert readme_exit_codes() in (ROOT / "README.md").read_text(), f"README exit codes {HINT}"
    res = CliRunner().invoke(app, ["--help"], terminal_width=400)
    assert f"Exit codes: {exit_codes_line(', ')}." in res.output
    main = render_all(__version__)["acdctool.1"]
    for e in EXIT_CODES:
        assert f"\\fB{e.code}\\fR" in main
