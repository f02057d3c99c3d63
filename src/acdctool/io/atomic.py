"""Safe outputs: written beside the target under a temp name, moved into place when complete.

Every output goes through :func:`atomic_path` (a file) or :func:`atomic_dir` (a folder), so

- a crash, an error, Ctrl-C, SIGTERM or SIGHUP never leaves a half-written output under the
  final name, and the temp file or folder is removed;
- an existing output is only replaced when the caller asked for it (``force``), also when it
  appeared while the command ran (the final move refuses to replace it);
- an output never deletes or replaces one of the command's inputs (:func:`check_overlap`):
  not the same path, not a folder holding an input, not an existing path inside an input
  folder;
- a full disk is a one-line :class:`OutputError`, not a traceback.

Temp names are ``.<target name>.<host>-<pid>.<random>.tmp``. A process killed with SIGKILL
cannot remove its temp; the next write to the same target removes such leftovers once
their writer is gone (:func:`acdctool.io.locks.owner_gone`), never a live writer's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from acdctool.errors import OutputError
from acdctool.io.locks import owner_gone, owner_tag, parse_owner

__all__ = [
    "TEMP_SUFFIX",
    "check_overlap",
    "check_output",
    "atomic_path",
    "atomic_dir",
    "stale_temps",
    "remove_stale_temps",
    "disk_full",
]

TEMP_SUFFIX = ".tmp"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

Inputs = Iterable[Path | str | None]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota, or file size limit) is full.

    >>> disk_full(OSError(errno.ENOSPC, "No space left on device")), disk_full(ValueError("x"))
    (True, False)
    """
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28" in text


def _full_message(path: Path, exc: BaseException) -> str:
    what = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno in _DISK_FULL else "No space left on device"
    return f"{path}: {what.lower()} while writing; nothing was written (free some space and rerun)"


@contextlib.contextmanager
def _full_disk_is_output_error(path: Path) -> Iterator[None]:
    """A full disk inside the block (an OSError, or h5py's RuntimeError around one) becomes one
    OutputError line naming ``path``; every other error propagates unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if disk_full(exc):
            raise OutputError(_full_message(path, exc)) from None
        raise


def check_overlap(output: Path | str, inputs: Inputs) -> None:
    """Refuse an output that could delete or replace one of ``inputs`` (files or folders).

    Symbolic links are resolved, so another name for an input is still that input. An output
    may not

    - be an input (same file or folder, including a hard link to it);
    - be an existing folder holding an input (replacing it would delete the input);
    - already exist inside an input folder (replacing it would change the input tree).

    A *new* path inside an input folder is fine (e.g. ``ACDC/slices.h5``). Inputs that do
    not exist are skipped (the stage reports them).

    Raises:
        OutputError: naming the output and the input.

    Example:
        >>> check_overlap("report", ["report/refined.h5"])  # doctest: +SKIP
        OutputError: report: holds the input report/refined.h5; ...
    """
    out = Path(os.path.realpath(output))
    exists = os.path.lexists(output)
    for src in inputs:
        if src is None or not os.path.exists(src):
            continue
        inp = Path(os.path.realpath(src))
        if out == inp or (exists and _same_file(output, src)):
            raise OutputError(f"{output}: is also an input of this command ({src}); write the output to another path")
        if exists and inp.is_relative_to(out):
            raise OutputError(
                f"{output}: holds the input {src}; replacing it would delete that input; write the output elsewhere"
            )
        if exists and inp.is_dir() and out.is_relative_to(inp):
            raise OutputError(
                f"{output}: is inside the input folder {src}; replacing it could destroy input data; "
                "write the output elsewhere"
            )


def _same_file(a: Path | str, b: Path | str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: Path, force: bool, inputs: Inputs = ()) -> Path:
    """Check that the file ``path`` may be written and that its folder exists (created if needed).

    Raises:
        OutputError: ``path`` overlaps an input (:func:`check_overlap`), is a folder, exists
            and ``force`` is false, or its folder cannot be created.
    """
    path = Path(path)
    check_overlap(path, inputs)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path}: already exists (use --force to overwrite)")
    _make_parent(path)
    return path


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if disk_full(exc):
            raise OutputError(_full_message(path.parent, exc)) from None
        raise OutputError(f"{path.parent}: cannot create output folder ({exc.strerror or exc})") from None


def stale_temps(path: Path) -> list[Path]:
    """Temp files and folders of ``path`` (beside it) whose writer is gone.

    A temp of a live process, of this process, of another host, or with a name this tool
    did not make is never listed.
    """
    path = Path(path)
    prefix = f".{path.name}."
    found = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        middle = name[len(prefix) : -len(TEMP_SUFFIX)]
        tag, sep, _random = middle.rpartition(".")
        owner = parse_owner(tag) if sep else None
        if owner is None:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if owner_gone(*owner, since=mtime):
            found.append(Path(entry.path))
    return sorted(found)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove :func:`stale_temps` of ``path``; returns what was removed."""
    removed = []
    for tmp in stale_temps(path):
        with contextlib.suppress(OSError):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
    return removed


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{owner_tag()}."


# ------------------------------------------------------------------ renames
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False when the system or file system lacks it (then fall back)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _move_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (FileExistsError), atomically where possible."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if src.is_file():
        try:
            os.link(src, dst)  # atomic: fails if dst exists
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links here: check-then-rename below
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "File exists", str(dst))
    os.rename(src, dst)


def _swap(tmp: Path, path: Path) -> Path:
    """Put folder ``tmp`` at ``path``; returns where the old ``path`` now is (to be removed).

    One atomic exchange where the system has it; else two renames, undone if the second fails.
    """
    if _renameat2(tmp, path, _RENAME_EXCHANGE):
        return tmp
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX))
    os.replace(path, aside / "old")
    try:
        os.replace(tmp, path)
    except OSError:
        os.replace(aside / "old", path)
        os.rmdir(aside)
        raise
    return aside


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ writers
@contextlib.contextmanager
def atomic_path(path: Path, force: bool = False, inputs: Inputs = ()) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success move it onto ``path``.

    The temp file is removed if the body raises (also on KeyboardInterrupt and the CLI's
    signal interrupts). Stale temps of ``path`` left by killed processes are removed first.

    Raises:
        OutputError: see :func:`check_output`; ``path`` appeared meanwhile (without
            ``force``); the folder is not writable; the disk is full.

    Example:
        >>> with atomic_path(Path("out.h5"), force=True) as tmp:  # doctest: +SKIP
        ...     write_everything(tmp)
    """
    path = check_output(Path(path), force, inputs)
    remove_stale_temps(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
    except OSError as exc:
        if disk_full(exc):
            raise OutputError(_full_message(path, exc)) from None
        raise OutputError(f"{path.parent}: cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with _full_disk_is_output_error(path):
            yield tmp
            _fsync(tmp)
            try:
                if force:
                    os.replace(tmp, path)
                else:
                    _move_noreplace(tmp, path)
            except FileExistsError:
                raise OutputError(f"{path}: appeared while writing (use --force to overwrite)") from None
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = False, inputs: Inputs = ()) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it becomes ``path`` (replacing it with ``force``).

    If the body raises, the temp folder is removed and an existing ``path`` is left untouched,
    so a failed run never leaves a partial report. The final swap is one atomic exchange on
    Linux; without ``force`` it never replaces a ``path`` that appeared while the body ran.

    Raises:
        OutputError: ``path`` overlaps an input (:func:`check_overlap`), exists (without
            ``force``), is a file, appeared meanwhile, or cannot be created; the disk is full.
    """
    path = Path(path)
    check_overlap(path, inputs)
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path}: already exists (use --force to overwrite)")
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    _make_parent(path)
    remove_stale_temps(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        if disk_full(exc):
            raise OutputError(_full_message(path, exc)) from None
        raise OutputError(f"{path.parent}: cannot create output folder ({exc.strerror or exc})") from None
    old: Path | None = None
    try:
        with _full_disk_is_output_error(path):
            yield tmp
            try:
                if force and path.is_dir() and not path.is_symlink():
                    old = _swap(tmp, path)
                else:
                    _move_noreplace(tmp, path)
            except FileExistsError:
                raise OutputError(f"{path}: appeared while writing (use --force to overwrite)") from None
    finally:
        for leftover in (tmp, old):
            if leftover is not None and os.path.lexists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)


def write_bytes(tmp: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``tmp`` with plain file I/O, so a full disk raises ``OSError(ENOSPC)``.

    Libraries that write files themselves (HDF5, ``torch.save``) report a full disk
    obscurely, or crash; they write into memory and this puts the bytes on disk.
    """
    with open(tmp, "wb") as fh:
        fh.write(data)
