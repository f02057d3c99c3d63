"""The divergence guard of NVAE training: name the loss term that blew up, and what to change.

:func:`check_finite` takes the terms dict of :class:`acdctool.models.nvae_loss.NVAELoss`
(``recon, dice, kl, kl_scale0 .., sr, bn, loss``, ...) and raises
:class:`~acdctool.errors.TrainingDivergedError` on the most specific bad term (a per-scale KL
before the total it contaminated), with advice that fits that term.

Example:
    >>> check_finite({"loss": 1.0, "recon": 0.5, "kl_scale0": 0.5})
    >>> check_finite({"loss": float("nan"), "kl_scale0": float("nan")})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    acdctool.errors.TrainingDivergedError: NVAE training diverged: loss term 'kl_scale0' is nan; ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from acdctool.errors import TrainingDivergedError

__all__ = ["check_finite"]

_ADVICE = {
    "recon": "lower the learning rate, check the targets are one-hot/labels in 0..3",
    "kl": "lower the learning rate, lengthen the KL warm-up, enable spectral regularisation "
    "(sr_weight ~1e-2), or use fewer stem channels",
    "sr": "lower sr_weight or the learning rate",
    "bn": "lower bn_weight or the learning rate",
    "dice": "lower the learning rate",
    "loss": "lower the learning rate, lengthen the KL warm-up, enable spectral regularisation",
}


def check_finite(
    terms: Mapping[str, torch.Tensor | float],
    kl_limit: float = 1e7,
    loss_limit: float = 1e9,
) -> None:
    """Raise ``TrainingDivergedError`` if a loss term is NaN/inf or exploding.

    Terms are checked most specific first (per-scale KL, reconstruction, penalties, totals),
    so the message names the term that blew up rather than the total it contaminated.

    Args:
        terms: the dict returned by ``NVAELoss`` (tensors or floats).
        kl_limit: a KL term (nats per slice) above this counts as exploding.
        loss_limit: any other term above this (in absolute value) counts as exploding.

    Raises:
        TrainingDivergedError: names the term, its value and what to change.
    """
    order = sorted(terms, key=lambda k: (0 if k.startswith("kl_scale") else
                                         1 if k in ("recon", "dice", "sr", "bn") else 2, k))  # fmt: skip
    for name in order:
        value = float(terms[name])
        is_kl = name.startswith("kl") and name != "kl_coeff"
        limit = kl_limit if is_kl else loss_limit
        if math.isfinite(value) and abs(value) <= limit:
            continue
        what = f"is {value}" if not math.isfinite(value) else f"= {value:.3g} > {limit:.3g}"
        advice = _ADVICE["kl" if is_kl else name] if (is_kl or name in _ADVICE) else (
            _ADVICE["loss"])  # fmt: skip
        raise TrainingDivergedError(f"NVAE training diverged: loss term '{name}' {what}; {advice}")
