"""Atomic outputs: write into a temp file beside the target, then ``os.replace``.

A crash, an error or Ctrl-C never leaves a half-written output under the final name, and an
existing output is only replaced when the caller asked for it (``force``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from acdctool.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: Path, force: bool, inputs: Iterable[Path | str | None] = ()) -> Path:
    """Check that ``path`` may be written and that its folder exists (created if needed).

    Raises:
        OutputError: ``path`` exists and ``force`` is false, is a folder, is one of ``inputs``
            (``--force`` would replace the file being read), or its folder cannot be created.
    """
    path = Path(path)
    for src in inputs:
        if src is not None and path.exists() and Path(src).exists() and os.path.samefile(path, src):
            raise OutputError(f"{path}: is also an input of this command; write the output to another path")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    if path.exists() and not force:
        raise OutputError(f"{path}: already exists (use --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot create output folder ({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def atomic_path(path: Path, force: bool = False, inputs: Iterable[Path | str | None] = ()) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on success move it onto ``path``.

    The temp file is removed if the body raises (including KeyboardInterrupt).

    Raises:
        OutputError: see :func:`check_output`; or the folder is not writable.

    Example:
        >>> with atomic_path(Path("out.h5"), force=True) as tmp:  # doctest: +SKIP
        ...     write_everything(tmp)
    """
    path = check_output(Path(path), force, inputs)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        # Re-check: another process may have created the output meanwhile.
        if path.exists() and not force:
            raise OutputError(f"{path}: appeared while writing (use --force to overwrite)")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it becomes ``path`` (replacing it with ``force``).

    If the body raises, the temp folder is removed and an existing ``path`` is left untouched,
    so a failed run never leaves a partial report.

    Raises:
        OutputError: ``path`` exists (without ``force``), is a file, or cannot be created.
    """
    import shutil

    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"{path}: already exists (use --force to overwrite)")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot create output folder ({exc.strerror or exc})") from None
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
