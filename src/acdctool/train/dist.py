"""Device choice and DistributedDataParallel plumbing (``torchrun``), no-ops in one process.

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`distributed` then joins the process group (``nccl`` on CUDA,
``gloo`` on CPU) and pins each process to ``cuda:LOCAL_RANK``. Without them everything here
degrades to single-process behaviour, so the trainer has one code path.

Example:
    ``torchrun --standalone --nproc-per-node=2 --no-python acdctool train-seg s.h5 -o run``
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

from acdctool import conventions

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_rank() -> int:
    """This process's rank from the torchrun environment (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def distributed(device_request: str) -> Iterator[DistContext]:
    """Join the torchrun process group if there is one; leave it on exit.

    Raises:
        ConfigError: see :func:`acdctool.conventions.resolve_device`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    device = conventions.resolve_device(device_request, local_rank)
    if world <= 1:
        yield DistContext(0, 1, 0, device)
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    try:
        yield DistContext(rank, world, local_rank, device)
    finally:
        tdist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes, in place (returns it)."""
    if ctx.is_distributed:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def all_gather_object(ctx: DistContext, obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in one process)."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    tdist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        tdist.barrier()


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result, or its exception, to every rank.

    File-system decisions (does the run folder exist? is there a checkpoint to resume?) must
    be taken once: if every rank looked, rank 1 could see the folder rank 0 just created.
    """
    if not ctx.is_distributed:
        return fn()
    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", exc)
    tdist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


class EpochSampler(torch.utils.data.Sampler[int]):
    """This rank's share of one epoch's shuffled order, optionally from a given position.

    The order is a pure function of (seed, epoch), like ``DistributedSampler``: every rank
    draws the same permutation, pads it by wrapping so ranks get equal shares (DDP needs the
    same number of steps everywhere), and takes every ``world``-th entry. ``start`` skips the
    first positions of the share, which is how a mid-epoch resume continues exactly.

    Args:
        n: dataset length.
        seed, epoch: what the permutation depends on.
        rank, world: this process and the process count.
        shuffle: permute (training) or keep order.
        start: positions of this rank's share to skip.
    """

    def __init__(
        self, n: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1, shuffle: bool = True, start: int = 0
    ) -> None:
        if shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = -(-n // world) * world
        if total > n:
            order = torch.cat([order, order[: total - n]])
        self.share = order[rank:total:world].tolist()
        self.indices = self.share[start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class StopSignals:
    """Turn SIGTERM/SIGINT/SIGHUP into a request (``received``) while active, in the main thread only.

    A preempted SLURM job gets SIGTERM, a closed terminal SIGHUP: the trainer then saves
    ``last.pt`` and returns. The first signal restores the previous handlers, so a second one
    interrupts at once (through the CLI's handlers).
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        for sig in self.SIGNALS:
            signal.signal(sig, self._old.get(sig, signal.SIG_DFL))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states and ``generator``'s, as plain
    data that ``torch.load(weights_only=True)`` accepts (lists, ints, byte tensors)."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # legacy=True gives the tuple unless NumPy's global generator is not MT19937
        raise RuntimeError(f"unexpected NumPy global RNG state {type(np_state).__name__}")
    return {
        "python": [version, list(keys), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "augment": generator.get_state(),
    }


def set_rng_state(saved: Mapping[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    version, keys, gauss = saved["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(saved["torch"])
    if device.type == "cuda" and saved.get("cuda") is not None:
        torch.cuda.set_rng_state(saved["cuda"], device)
    generator.set_state(saved["augment"])
