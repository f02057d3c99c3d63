"""Provenance stored in every output: which tool, which inputs, which command, when, where."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from acdctool import __version__


def make_provenance(inputs: Iterable[Path | str], command: list[str] | None = None) -> dict[str, Any]:
    """Return a JSON-ready provenance record.

    Args:
        inputs: input files or folders, stored as absolute paths.
        command: the command line; defaults to ``sys.argv`` (the tool's invocation).
    """
    argv = list(sys.argv if command is None else command)
    if argv:
        argv[0] = Path(argv[0]).name
    return {
        "tool": "acdctool",
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "command": shlex.join(argv),
        "inputs": [str(Path(p).resolve()) for p in inputs],
    }
