"""Worker processes that never outlive their command, and leave signals to it.

Ctrl-C and a hang-up reach the whole process group; a ``kill`` reaches only the command. The
command (see :func:`acdctool.cli.common.install_signal_handlers`) handles all three and ends
its workers, which therefore ignore SIGINT and SIGHUP and die at once on SIGTERM. On Linux a
worker also gets SIGTERM when its parent dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["quiet_worker", "process_map"]


def quiet_worker(worker_id: int = 0) -> None:
    """Initialise a worker process (a DataLoader's ``worker_init_fn``, a pool's ``initializer``)."""
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the line above took effect
        os._exit(1)


def process_map(fn: Callable[..., T], jobs: Iterable[tuple[Any, ...]], workers: int) -> list[T]:
    """``[fn(*job) for job in jobs]`` over ``workers`` processes, in order.

    If anything interrupts the map (an error, Ctrl-C, a signal), the workers are killed before
    the exception propagates: none keeps computing for a command that is gone.

    Example:
        >>> process_map(pow, [(2, 3), (3, 2)], workers=2)
        [8, 9]
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    pool = ProcessPoolExecutor(max_workers=workers, initializer=quiet_worker)
    try:
        return list(pool.map(fn, *zip(*jobs, strict=False)))
    except BaseException:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
