"""Exponential moving average of a model's weights (``--ema``), validated and saved as ``best.pt``.

Late in a cosine schedule a model's validation score can still move from one epoch to the
next (the NVAE's Dice by ±0.005), and picking the best epoch then rides that noise. Evaluating
an average of the recent weights instead of the last iterate (Polyak averaging; Izmailov et
al., "Averaging weights leads to wider optima", 2018) smooths it. :class:`WeightAverage`
keeps, for every floating-point tensor of the model's state (parameters and batch-norm running
statistics), ``avg ← d·avg + (1 − d)·live`` after each optimiser step, with the warm-up
``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` so that the early average is not
dominated by the random initial weights. Integer buffers (``num_batches_tracked``) follow the
live model. On the NVAE (two folds, README) it smoothed the curve but found no better model
than the best live epoch; it is off by default.

The trainer validates with the average swapped in (:meth:`WeightAverage.applied`), writes
those weights to ``best.pt``, and keeps the live weights in ``last.pt`` with the average in
its ``train`` entry, so a resumed run continues both exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from acdctool.errors import BadInputError

__all__ = ["WeightAverage"]


class WeightAverage:
    """Exponential moving average of ``model``'s floating-point state.

    Args:
        model: the trained module (not a DDP wrapper); its tensors are tracked by name.
        decay: ``d`` in (0, 1): the average's memory is about ``1 / (1 − d)`` optimiser steps.

    Raises:
        ValueError: ``decay`` outside (0, 1).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> avg = WeightAverage(net, decay=0.5)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> start = net.weight.detach().clone()
        >>> avg.update()
        >>> with avg.applied():
        ...     bool(torch.all(net.weight < start))  # the average lags behind the live weights
        True
        >>> bool(torch.equal(net.weight, start))  # put back afterwards
        True
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        state = model.state_dict(keep_vars=True)
        self.names = [name for name, t in state.items() if t.is_floating_point()]
        self._live = [state[name].detach() for name in self.names]
        with torch.no_grad():
            self._avg = [t.clone() for t in self._live]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live weights into the average (call after each optimiser step)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._avg, self._live, 1.0 - d)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; the live ones come back after
        (also on an exception)."""
        with torch.no_grad():
            live = [t.clone() for t in self._live]
            torch._foreach_copy_(self._live, self._avg)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._live, live)

    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "updates", "tensors": {name: tensor}}`` for the checkpoint's ``train`` entry."""
        return {"decay": self.decay, "updates": self.updates, "tensors": dict(zip(self.names, self._avg, strict=True))}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            BadInputError: its tensors do not match this model's by name or shape.
        """
        tensors = state["tensors"]
        if sorted(tensors) != sorted(self.names):
            raise BadInputError("the checkpoint's weight average does not fit this model")
        for name, avg in zip(self.names, self._avg, strict=True):
            if tuple(tensors[name].shape) != tuple(avg.shape):
                raise BadInputError(f"the checkpoint's weight average of {name} has another shape")
            avg.copy_(tensors[name])
        self.updates = int(state["updates"])
