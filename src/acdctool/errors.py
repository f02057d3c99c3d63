"""Typed errors raised by the library; the CLI maps each to a one-line message and an exit code.

Exit codes follow BSD sysexits (see ``man acdctool``):

====  ==========================================================
0     success
1     anything unexpected (a bug: please report it)
2     usage error (Typer's own)
65    bad input data (``BadInputError`` and subclasses)
66    input missing (``InputMissingError``)
73    output cannot be created, or exists without ``--force``
130   interrupted
====  ==========================================================

Library code never prints or exits: it raises one of these with a message that names the
file (and patient/row where relevant) and, where possible, what to do about it.
"""

from __future__ import annotations

EX_OK = 0
EX_SOFTWARE = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73
EX_INTERRUPTED = 130


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
