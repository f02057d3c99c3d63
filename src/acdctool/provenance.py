"""Provenance stored in every output: which tool, which inputs, which command, when, where.

The command line is given by the caller: the CLI passes ``sys.argv`` (read only in
:mod:`acdctool.cli`); a call from Python passes its own description or nothing (stored as null).
"""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from acdctool import __version__

Provenance = dict[str, Any]
"""A JSON-ready provenance record (see :func:`make_provenance`)."""


def make_provenance(inputs: Iterable[Path | str], command: Sequence[str] | None = None) -> Provenance:
    """Return a JSON-ready provenance record.

    Args:
        inputs: input files or folders, stored as absolute paths.
        command: the command line (``argv``; its first item is reduced to the program name);
            None when not called from a command line.

    Example:
        >>> p = make_provenance(["a.h5"], ["/usr/bin/acdctool", "info", "a.h5"])
        >>> p["command"], p["inputs"][0].endswith("a.h5")
        ('acdctool info a.h5', True)
    """
    argv = None if command is None else list(command)
    if argv:
        argv[0] = Path(argv[0]).name
    return {
        "tool": "acdctool",
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "command": None if argv is None else shlex.join(argv),
        "inputs": [str(Path(p).resolve()) for p in inputs],
    }
