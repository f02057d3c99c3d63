"""``torch.compile`` for a training step, with a fall-back to eager that never crashes a run.

Inductor turns the NVAE's hundreds of small element-wise ops (batch norm, SiLU, residual adds,
soft clamps, the KL's closed form) into a few fused C++ loops; the convolutions stay oneDNN
calls. It costs minutes of compilation on the first step, so it pays off on long runs only.

Compilation can fail where no C++ compiler is found, on an unsupported op, or when inductor's
on-disk cache is damaged (seen here: ``file too short`` after a killed run). A failure must not
lose a training run, so the first call is a *trial*: the compiled forward **and** backward run
once on the real batch, then every side effect is undone (RNG state, batch-norm statistics,
gradients). If anything in it raises a compiler error, :class:`CompiledStep` reports one line
through ``note`` and runs eagerly from then on; the run's results do not depend on the trial.

Random ops run through torch's eager RNG inside compiled graphs (inductor's
``fallback_random``), so a compiled step draws the same latents as an eager one from the same
seed: the two agree up to float rounding, and an exact ``--resume`` stays exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledStep", "is_compile_error"]

_COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch._subclasses", "torch.fx")


def is_compile_error(exc: BaseException) -> bool:
    """True when ``exc`` comes from the compiler stack (dynamo, AOTAutograd, inductor, the C++
    toolchain), not from the model's own checks (e.g. a :class:`~acdctool.errors.BadInputError`).

    Example:
        >>> is_compile_error(ValueError("x"))
        False
    """
    for cls in type(exc).__mro__:
        if cls.__module__.startswith(_COMPILER_MODULES):
            return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_compile_error(cause)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside ``value`` (tensors, sequences, mappings, dataclasses)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


class CompiledStep:
    """Call ``module`` through ``torch.compile`` when ``enabled``, eagerly otherwise or after a failure.

    Args:
        module: the network (or its DDP wrapper); called as ``module(*args)``.
        enabled: try to compile.
        note: receives one line when compilation fails and the step falls back to eager.
        compiler: the compile function (``torch.compile``; replaceable in tests).

    Attributes:
        compiled: True while the compiled path is in use.

    Example:
        >>> step = CompiledStep(nn.Linear(2, 1), enabled=False)
        >>> tuple(step(torch.zeros(3, 2)).shape), step.compiled
        ((3, 1), False)
    """

    def __init__(
        self,
        module: nn.Module,
        enabled: bool,
        note: Callable[[str], None] | None = None,
        compiler: Callable[..., Any] | None = None,
    ) -> None:
        self.module, self.note = module, note
        self._fn: Callable[..., Any] | None = None
        self._tried = False
        if enabled:
            import torch._inductor.config as inductor_config

            # Same random draws as eager (torch's RNG), see the module docstring.
            inductor_config.fallback_random = True
            self._fn = (compiler or torch.compile)(module, dynamic=False)

    @property
    def compiled(self) -> bool:
        return self._fn is not None

    def __call__(self, *args: Any) -> Any:
        if self._fn is not None and not self._tried:
            self._tried = True
            try:
                self._trial(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure degrades to eager
                if not is_compile_error(exc):
                    raise
                self._fall_back(exc)
        if self._fn is not None:
            return self._fn(*args)
        return self.module(*args)

    def _fall_back(self, exc: BaseException) -> None:
        self._fn = None
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        if self.note is not None:
            self.note(f"torch.compile failed ({type(exc).__name__}: {first}); continuing without compilation")

    def _trial(self, *args: Any) -> None:
        """Compile forward and backward on ``args``, leaving no trace on the model or the RNG."""
        assert self._fn is not None
        params = [p for p in self.module.parameters() if p.requires_grad]
        grads = [p.grad for p in params]
        buffers = [(b, b.detach().clone()) for b in self.module.buffers()]
        devices = sorted({t.device.index for t in [*params, *_tensors(args)] if t.device.type == "cuda"})
        try:
            with torch.random.fork_rng(devices=devices):
                out = self._fn(*args)
                total = sum((t.float().sum() for t in _tensors(out) if t.requires_grad), torch.zeros(()))
                if isinstance(total, torch.Tensor) and total.requires_grad:
                    total.backward()
        finally:
            with torch.no_grad():
                for buf, saved in buffers:
                    buf.copy_(saved)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
