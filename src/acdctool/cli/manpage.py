"""Man pages (roff) and shell completion scripts generated from the Typer app itself.

``scripts/gen_docs.py`` writes them into ``man/`` and ``completions/``; a test regenerates them
in memory and fails when the committed files are out of date with the app. Rendering is done
here from the Click command tree (Typer vendors Click), so no external tool is needed and the
output is byte-for-byte deterministic.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

from acdctool.errors import EXIT_CODES, SIGNALS

NO_REWRAP = "\b"
"""Click's marker line: the paragraph after it is printed as written (examples stay on one line)."""
SHELLS = ("bash", "zsh", "fish")


def _esc(text: str) -> str:
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in out.splitlines())


def _cli():
    import typer

    from acdctool.cli.app import app

    return typer.main.get_command(app)


def render_all(version: str) -> dict[str, str]:
    """File name → roff text: ``acdctool.1`` and ``acdctool-<command>.1`` for each command."""
    group = _cli()
    pages = {"acdctool.1": _main_page(group, version)}
    for name, cmd in sorted(group.commands.items()):
        pages[f"acdctool-{name}.1"] = _command_page(name, cmd, version)
    return pages


def _header(name: str, version: str, summary: str) -> list[str]:
    return [
        f'.TH "{name.upper()}" "1" "" "acdctool {version}" "acdctool manual"',
        ".SH NAME",
        f"{_esc(name)} \\- {_esc(summary)}",
    ]


def _main_page(group: Any, version: str) -> str:
    lines = _header("acdctool", version, "cardiac MRI segmentation research toolkit for ACDC")
    lines += [
        ".SH SYNOPSIS",
        "\\fBacdctool\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _esc(group.help or ""),
        ".SH COMMANDS",
    ]
    for name, cmd in sorted(group.commands.items()):
        lines += [".TP", f"\\fB{_esc(name)}\\fR", _esc(cmd.get_short_help_str(limit=200))]
    lines += [".SH OPTIONS"] + _options(group)
    lines += _exit_codes()
    lines += [
        ".SH EXAMPLES",
        ".nf",
        _esc(
            "acdctool synth demo/ACDC --patients 20\n"
            "acdctool prep demo/ACDC -o slices.h5\n"
            "acdctool info slices.h5 --json\n"
            "acdctool eval slices.h5 -o report/"
        ),
        ".fi",
        ".SH SEE ALSO",
        ", ".join(f"\\fBacdctool\\-{_esc(n)}\\fR(1)" for n in sorted(group.commands)),
    ]
    return "\n".join(lines) + "\n"


def _unmark(text: str) -> str:
    """``text`` without Click's no-rewrap marker lines."""
    return "\n".join(line for line in text.split("\n") if line.strip() != NO_REWRAP)


def _arg_name(p: Any) -> str:
    return p.metavar or p.name.upper()


def _command_page(name: str, cmd: Any, version: str) -> str:
    helptext = (cmd.help or "").strip()
    body, _, example = helptext.partition("Example:")
    body, example = _unmark(body), _unmark(example)
    lines = _header(f"acdctool-{name}", version, cmd.get_short_help_str(limit=200))
    args = " ".join(f"\\fI{_esc(_arg_name(p))}\\fR" for p in cmd.params if p.param_type_name == "argument")
    lines += [".SH SYNOPSIS", f"\\fBacdctool {_esc(name)}\\fR {args} [\\fIOPTIONS\\fR]", ".SH DESCRIPTION"]
    lines += [_esc(par.replace("\n", " ").strip()) + "\n.PP" for par in body.strip().split("\n\n") if par.strip()]
    arguments = [p for p in cmd.params if p.param_type_name == "argument"]
    if arguments:
        lines.append(".SH ARGUMENTS")
        for p in arguments:
            lines += [".TP", f"\\fI{_esc(_arg_name(p))}\\fR", _esc(getattr(p, "help", "") or "")]
    lines += [".SH OPTIONS"] + _options(cmd)
    lines += _exit_codes()
    if example.strip():
        lines += [".SH EXAMPLE", ".nf", _esc(textwrap.dedent(example.strip("\n")).strip()), ".fi"]
    lines += [".SH SEE ALSO", "\\fBacdctool\\fR(1)"]
    return "\n".join(lines) + "\n"


def _options(cmd: Any) -> list[str]:
    ctx = cmd.context_class(cmd, info_name=cmd.name)
    out: list[str] = []
    for p in cmd.params:
        if p.param_type_name != "option" or p.hidden or p.name in ("install_completion", "show_completion"):
            continue
        record = p.get_help_record(ctx)
        if record:
            out += [".TP", f"\\fB{_esc(record[0])}\\fR", _esc(record[1])]
    return out


def _exit_codes() -> list[str]:
    lines = [".SH EXIT STATUS"]
    for e in EXIT_CODES:
        lines += [".TP", f"\\fB{e.code}\\fR", _esc(e.meaning)]
    lines += [".PP", _esc(SIGNALS)]
    return lines


README_EXIT_CODES = ("<!-- exit-codes: generated from errors.py by scripts/gen_docs.py -->", "<!-- /exit-codes -->")
"""The markers around the README's exit-code line."""


def readme_exit_codes() -> str:
    """The README's exit-code block, markers included (from :data:`acdctool.errors.EXIT_CODES`)."""
    from acdctool.errors import exit_codes_line

    begin, end = README_EXIT_CODES
    return f"{begin}\nExit codes: {exit_codes_line()}.\n{end}"


def update_readme(text: str) -> str:
    """``text`` (the README) with its exit-code block regenerated.

    Raises:
        ValueError: the README lacks the markers.
    """
    begin, end = README_EXIT_CODES
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"README: no {begin} ... {end} block")
    return text[:i] + readme_exit_codes() + text[j + len(end) :]


def completion_script(shell: str) -> str:
    """The completion script for ``shell``: Click's (``_ACDCTOOL_COMPLETE=source_<shell>``), zsh's made installable.

    Typer's zsh script starts with a blank line, so ``#compdef`` is not on line 1 and compinit
    ignores the file on ``$fpath``; and it only registers a function with ``compdef``, so even
    then the first Tab would complete nothing. See :func:`_zsh_function_file`.
    """
    env = {**os.environ, "_ACDCTOOL_COMPLETE": f"source_{shell}"}
    code = "from acdctool.cli.app import main; main()"
    text = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return _zsh_function_file(text) if shell == "zsh" else text


def _zsh_function_file(typer_script: str, prog: str = "acdctool") -> str:
    """Typer's zsh script as a completion function file that works both ways the README says.

    ``#compdef`` on line 1; the function is ``_acdctool``, the name of the installed file, so
    that autoloading it from ``$fpath`` defines the function and completes at once (the first
    call runs the whole file, in the ``loadautofunc`` context); sourcing it after ``compinit``
    registers the function with ``compdef``. The line that asks the program for completions is
    Typer's own.

    Raises:
        RuntimeError: Typer's script no longer has the expected shape.
    """
    lines = typer_script.strip().splitlines()
    asks = [line.strip() for line in lines if line.strip().startswith("eval $(env ")]
    if len(asks) != 1 or lines[0] != f"#compdef {prog}":
        raise RuntimeError(f"unexpected zsh completion script from Typer:\n{typer_script}")
    return (
        f"#compdef {prog}\n"
        f"# zsh completion for {prog}: copy to a folder on $fpath as _{prog} (before compinit runs),\n"
        f"# or source this file after compinit.\n"
        f"\n"
        f"_{prog}() {{\n"
        f"  {asks[0]}\n"
        f"}}\n"
        f"\n"
        f"if [[ $zsh_eval_context[-1] == loadautofunc ]]; then\n"
        f'  _{prog} "$@"  # autoloaded from $fpath: complete now; later calls run the function above\n'
        f"else\n"
        f"  compdef _{prog} {prog}\n"
        f"fi\n"
    )
