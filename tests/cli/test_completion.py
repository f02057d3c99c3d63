"""Shell completion as the README installs it; the zsh checks run where zsh is installed (.ci/run adds it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from acdctool.cli.manpage import completion_script

ROOT = Path(__file__).resolve().parents[2]
ZSH = shutil.which("zsh")
needs_zsh = pytest.mark.skipif(ZSH is None, reason="zsh is not installed")


@pytest.fixture(scope="module")
def zsh_script() -> str:
    return completion_script("zsh")


@pytest.fixture()
def fpath_dir(tmp_path: Path, zsh_script: str) -> Path:
    """A folder holding the zsh completion installed as the README says: ``_acdctool`` on $fpath."""
    (tmp_path / "_acdctool").write_text(zsh_script)
    return tmp_path


def test_zsh_script_starts_with_compdef(zsh_script):
    assert zsh_script.splitlines()[0] == "#compdef acdctool"  # compinit reads line 1 only
    assert "_ACDCTOOL_COMPLETE=complete_zsh" in zsh_script


def _zsh(script: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    assert ZSH is not None
    res = subprocess.run([ZSH, "-f", "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


@needs_zsh
def test_compinit_finds_the_installed_function(fpath_dir, tmp_path):
    out = _zsh(
        f"fpath=({fpath_dir} $fpath); autoload -Uz compinit; compinit -u -d {tmp_path}/dump; "
        "whence -w _acdctool; print -r -- $_comps[acdctool]"
    )
    assert out.splitlines() == ["_acdctool: function", "_acdctool"]


@needs_zsh
def test_sourced_after_compinit_registers_the_function(tmp_path):
    out = _zsh(
        f"autoload -Uz compinit; compinit -u -d {tmp_path}/dump; source {ROOT / 'completions' / 'acdctool.zsh'}; "
        "whence -w _acdctool; print -r -- $_comps[acdctool]"
    )
    assert out.splitlines() == ["_acdctool: function", "_acdctool"]


def test_the_program_completes_commands_and_choices():
    """What the zsh function evals: Typer's answer for the words typed so far."""
    acdctool = shutil.which("acdctool")
    if acdctool is None:
        pytest.skip("the acdctool entry point is not on PATH")

    def ask(words: str) -> str:
        env = dict(os.environ, _ACDCTOOL_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS=words)
        return subprocess.run([acdctool], capture_output=True, text=True, env=env, timeout=60, check=True).stdout

    commands = ask("acdctool tr")
    assert commands.startswith("_arguments") and '"train-seg"' in commands and '"train-nvae"' in commands
    assert '"prep"' not in commands


# Drives an interactive zsh in a pseudo-terminal: type WORDS<Tab>, then print the edited line.
DRIVER = r"""
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "PS1='> '; fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -d $2"
shift 2
for words; do
  zpty -w -n z "acdctool $words"$'\t'
  zpty -w -n z $'\C-a echo LINE:\C-e\n'
done
out=""
typeset -a hits
integer waited=0
while (( $#hits < $# && waited < 600 )); do
  if zpty -r -t z chunk; then
    out+=${chunk//$'\r'/}
    hits=( ${(M)${(f)out}:#LINE:*} )
  else
    sleep 0.1; (( waited++ ))
  fi
done
print -rl -- $hits
zpty -d z
"""


@needs_zsh
def test_tab_completes_in_interactive_zsh(fpath_dir, tmp_path):
    """The first Tab after compinit already completes (the autoloaded file calls its function)."""
    if shutil.which("acdctool") is None:
        pytest.skip("the acdctool entry point is not on PATH")
    driver = tmp_path / "driver.zsh"
    driver.write_text(DRIVER)
    res = subprocess.run(
        [ZSH, "-f", str(driver), str(fpath_dir), str(tmp_path / "dump"), "tr", "train-s", "make-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode == 3:
        pytest.skip("zsh has no zpty module")
    lines = [line.split() for line in res.stdout.splitlines()]
    assert lines == [["LINE:acdctool", "train-"], ["LINE:acdctool", "train-seg"], ["LINE:acdctool", "make-3gram"]]
