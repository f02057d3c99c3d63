#!/usr/bin/env python3
"""Regenerate man/*.1, completions/acdctool.{bash,zsh,fish} and the README's exit codes from the app.

Usage: python scripts/gen_docs.py        (run after changing any command, option or exit code;
       tests/cli/test_docs.py fails while these files are out of date)
"""

from __future__ import annotations

from pathlib import Path

from acdctool import __version__
from acdctool.cli.manpage import SHELLS, completion_script, render_all, update_readme

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    man = ROOT / "man"
    man.mkdir(exist_ok=True)
    pages = render_all(__version__)
    for stale in man.glob("*.1"):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        (man / name).write_text(text)
    comp = ROOT / "completions"
    comp.mkdir(exist_ok=True)
    for shell in SHELLS:
        (comp / f"acdctool.{shell}").write_text(completion_script(shell))
    readme = ROOT / "README.md"
    readme.write_text(update_readme(readme.read_text()))
    print(f"wrote {len(pages)} man pages, {len(SHELLS)} completion scripts and the README's exit codes")


if __name__ == "__main__":
    main()
