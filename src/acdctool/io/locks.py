"""Who owns a file: process identity, liveness, and the lock of a folder with one writer.

Temporary files carry their writer's host and PID in their name
(``.<target>.<host>-<pid>.<random>.tmp``, see :mod:`acdctool.io.atomic`), and a run folder's
``.lock`` records the same, so a later process can tell the leftovers of a killed process
(safe to remove) from the work in progress of a live one (never touched).

A process is *gone* when it runs on this host and its PID is dead, a zombie, or reused by a
process that started after the file was written. Files of another host are never judged
gone: their owner cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acdctool.errors import OutputError

__all__ = ["HOST", "owner_tag", "parse_owner", "process_start_time", "owner_gone", "FolderLock"]

HOST = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname().split(".")[0]) or "host"
"""This machine's short host name, made safe for file names (no dots, so names parse back)."""


def owner_tag(pid: int | None = None) -> str:
    """``<host>-<pid>`` of this process (or of ``pid``), as put into temp file names.

    >>> owner_tag(42).endswith("-42")
    True
    """
    return f"{HOST}-{os.getpid() if pid is None else pid}"


def parse_owner(tag: str) -> tuple[str, int] | None:
    """``"<host>-<pid>"`` → ``(host, pid)``; None when ``tag`` is not one.

    >>> parse_owner("node7-1234"), parse_owner("x.y")
    (('node7', 1234), None)
    """
    host, sep, pid = tag.rpartition("-")
    if not sep or not host or "." in host or not pid.isdigit():
        return None
    return host, int(pid)


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if unknown (no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        btime = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces: skip past ')'
    try:
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, OSError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rfind(")") + 2 :].startswith("Z"):
            return False  # a zombie: it has exited, only its exit status waits to be read
    return True


def owner_gone(host: str, pid: int, since: float | None = None) -> bool:
    """Whether the process ``pid`` on ``host`` that wrote something at time ``since`` is gone.

    False for another host (cannot be checked) and for this very process.
    """
    if host != HOST or pid == os.getpid():
        return False
    if not _alive(pid):
        return True
    started = process_start_time(pid)
    # The PID was reused: the live process started after the file was written.
    return since is not None and started is not None and started > since + 1.0


@dataclass
class FolderLock:
    """An exclusive lock on a folder (``<folder>/.lock``) for the length of one writer's work.

    The lock is an ``flock`` on the file, which the kernel releases when its process dies, so
    a killed writer never blocks the folder; the file's content (PID, host, start time,
    command) names the holder in messages. A lock file left behind by a process that is gone
    is *stale*: :meth:`acquire` takes it over and says so in :attr:`note`.

    Raises (from :meth:`acquire`):
        OutputError: another live process holds the lock.

    Example:
        >>> lock = FolderLock(Path("runs/unet")).acquire()  # doctest: +SKIP
        >>> lock.release()  # doctest: +SKIP
    """

    folder: Path
    name: str = ".lock"
    note: str | None = None
    _fd: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.name

    def holder(self) -> dict[str, Any] | None:
        """What the lock file says about its holder (None if absent or unreadable)."""
        try:
            data = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def in_use(self) -> dict[str, Any] | None:
        """The holder's record if a live process holds the lock now, else None (takes nothing)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.holder() or {}
        except OSError:
            return None
        finally:
            os.close(fd)  # closing drops a lock we may just have taken
        return None

    def acquire(self) -> FolderLock:
        import fcntl

        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(self._busy_message(self.holder() or {})) from None
            # The holder may have removed the file between our open and our lock: retry on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self.holder()
            if previous:
                self.note = (
                    f"{self.path}: took over a stale lock of PID {previous.get('pid')} on {previous.get('host')} "
                    f"(that process ended without releasing it)"
                )
            record = {
                "pid": os.getpid(),
                "host": HOST,
                "started": process_start_time(os.getpid()),
                "locked_at": time.time(),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            self._fd = fd
            return self
        raise OutputError(f"{self.path}: could not lock (the lock file keeps changing)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass  # already gone (e.g. the folder was removed)
        os.close(self._fd)
        self._fd = None

    def _busy_message(self, who: dict[str, Any]) -> str:
        since = who.get("locked_at")
        when = time.strftime(" since %Y-%m-%d %H:%M", time.localtime(since)) if isinstance(since, float) else ""
        return (
            f"{self.folder}: in use by PID {who.get('pid', '?')} on {who.get('host', '?')}{when}; "
            "wait for it to finish (only one process may write a run folder)"
        )
