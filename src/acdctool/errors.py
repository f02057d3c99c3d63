"""Typed errors raised by the library; the CLI maps each to a one-line message and an exit code.

Exit codes follow BSD sysexits. :data:`EXIT_CODES` is their single source: the man pages,
``acdctool --help`` and the README's "Exit codes" line are generated from it
(``python scripts/gen_docs.py``).

Library code never prints or exits: it raises one of these with a message that names the
file (and patient/row where relevant) and, where possible, what to do about it.
"""

from __future__ import annotations

from typing import NamedTuple

EX_OK = 0
EX_SOFTWARE = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73
EX_INTERRUPTED = 130


class ExitCode(NamedTuple):
    """One exit status: its number, a few words (README, ``--help``) and a one-line meaning (man)."""

    code: int
    short: str
    meaning: str


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EX_OK, "ok", "success"),
    ExitCode(EX_SOFTWARE, "unexpected error", "unexpected error (set ACDCTOOL_DEBUG=1 for a traceback)"),
    ExitCode(EX_USAGE, "usage error", "usage error: bad option or inconsistent configuration"),
    ExitCode(
        EX_DATAERR,
        "bad input data",
        "bad input data: malformed file, wrong file kind or schema version, labels outside 0..3",
    ),
    ExitCode(EX_NOINPUT, "input missing", "input missing: a file or folder that does not exist"),
    ExitCode(
        EX_CANTCREAT,
        "output cannot be created or exists",
        "output cannot be created, or exists and --force was not given",
    ),
    ExitCode(EX_INTERRUPTED, "interrupted", "interrupted (SIGINT/SIGTERM); training saves last.pt first"),
)
"""Every exit status of ``acdctool``, in increasing order."""


def exit_codes_line(sep: str = " · ") -> str:
    """The exit codes in one line, e.g. ``0 ok · 1 unexpected error · ... · 130 interrupted``.

    >>> exit_codes_line(", ").split(", ")[:2]
    ['0 ok', '1 unexpected error']
    """
    return sep.join(f"{e.code} {e.short}" for e in EXIT_CODES)


class AcdcToolError(Exception):
    """Base class of every error the CLI reports as a one-line message."""

    exit_code: int = EX_SOFTWARE


class BadInputError(AcdcToolError):
    """An input exists but its content is wrong (malformed, inconsistent, out of range)."""

    exit_code = EX_DATAERR


class FileKindError(BadInputError):
    """A file is not the kind of artifact expected (e.g. a checkpoint given as a dataset)."""


class SchemaVersionError(BadInputError):
    """A file was written with a schema version this tool does not read."""


class InputMissingError(AcdcToolError):
    """An input file or folder (or a file it refers to) does not exist."""

    exit_code = EX_NOINPUT


class OutputError(AcdcToolError):
    """An output cannot be created, or already exists and ``force`` was not given."""

    exit_code = EX_CANTCREAT


class ConfigError(AcdcToolError):
    """A configuration is inconsistent (e.g. group list length differs from scales)."""

    exit_code = EX_USAGE


class TrainingDivergedError(AcdcToolError):
    """Training produced a non-finite or exploding loss; the last good checkpoint is kept."""

    exit_code = EX_SOFTWARE
