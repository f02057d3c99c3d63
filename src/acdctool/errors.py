"""Typed errors raised by the library; the CLI maps each to a one-line message and an exit code.

Exit codes follow BSD sysexits. :data:`EXIT_CODES` is their single source: the man pages,
``acdctool --help`` and the README's "Exit codes" line are generated from it
(``python scripts/gen_docs.py``).

Library code never prints or exits: it raises one of these with a message that names the
file (and patient/row where relevant) and, where possible, what to do about it.

Signals follow the shell's convention, exit status 128 + signal number: SIGHUP (hang-up)
129, SIGINT (Ctrl-C) 130, SIGTERM 143. Every command treats the three alike: one line on
stderr, temp files and folders removed, worker processes ended, previous outputs untouched;
a training run first saves ``last.pt`` (rerun with ``--resume``). The CLI raises
:class:`Interrupted` from its signal handlers to unwind the stage.
"""

from __future__ import annotations

from typing import NamedTuple

EX_OK = 0
EX_SOFTWARE = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73
EX_HANGUP = 129
EX_INTERRUPTED = 130
EX_TERMINATED = 143


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
        "output cannot be created, exists and --force was not given, would replace an input, or the disk is full",
    ),
    ExitCode(EX_HANGUP, "hang-up", "SIGHUP (terminal closed): stopped as for Ctrl-C"),
    ExitCode(EX_INTERRUPTED, "interrupted", "interrupted (SIGINT, Ctrl-C); temp files removed, training saves last.pt"),
    ExitCode(EX_TERMINATED, "terminated", "SIGTERM (e.g. a preempted job): stopped as for Ctrl-C"),
)
"""Every exit status of ``acdctool``, in increasing order."""

SIGNALS = (
    "Signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP stop every command the same way: one line on "
    "stderr, exit status 128 + the signal number (130, 143, 129), temporary files and folders "
    "removed, worker processes ended, existing outputs untouched; training saves last.pt first "
    "(continue with --resume). A second signal exits at once; temporary files a killed process "
    "leaves (.NAME.HOST-PID.*.tmp) are removed by the next command that writes NAME."
)
"""The signal convention, in words (man pages)."""


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


class Interrupted(BaseException):
    """A signal asked the command to stop (raised by the CLI's handlers, like KeyboardInterrupt).

    A ``BaseException``, so ``except Exception`` blocks do not swallow it while ``finally``
    blocks and context managers still clean up.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_exit_code(signum: int | None) -> int:
    """Exit status of a command stopped by ``signum`` (None: stopped on request → 130).

    >>> signal_exit_code(15), signal_exit_code(1), signal_exit_code(None)
    (143, 129, 130)
    """
    return EX_INTERRUPTED if signum is None else 128 + int(signum)


class TrainingDivergedError(AcdcToolError):
    """Training produced a non-finite or exploding loss; the last good checkpoint is kept."""

    exit_code = EX_SOFTWARE
