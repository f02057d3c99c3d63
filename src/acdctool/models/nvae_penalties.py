"""Stabilisers of NVAE training (Vahdat & Kautz 2020): spectral and batch-norm scale penalties.

- :class:`SpectralNormPenalty`: ``sum_i s_i``, the largest singular value of every conv weight
  (reshaped to ``(out, in·k·k)``), estimated by power iteration with persistent vectors.
- :func:`bn_scale_penalty`: ``sum_layers max_c |gamma_c|``, the norm of the (diagonal) map of
  each BN layer, so the eval-mode network cannot grow its gain through BN scales while the
  spectral penalty holds the convs.

:class:`acdctool.models.nvae_loss.NVAELoss` adds them with weights ``sr_weight`` and
``bn_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpectralNormPenalty", "bn_scale_penalty"]


def bn_scale_penalty(model: nn.Module) -> torch.Tensor:
    """``sum_layers max_c |gamma_c|`` over the model's ``BatchNorm2d`` layers (differentiable)."""
    maxima = [m.weight.abs().max() for m in model.modules()
              if isinstance(m, nn.BatchNorm2d) and m.weight is not None]  # fmt: skip
    if not maxima:
        return torch.zeros(())
    return torch.stack(maxima).sum()


class SpectralNormPenalty(nn.Module):
    """Sum of the largest singular values of a model's conv weights, by power iteration.

    Every ``Conv2d`` weight ``(out, in/groups, k, k)`` is viewed as the matrix
    ``(out, in/groups·k·k)``; weights of equal matrix shape are stacked so one batched
    iteration serves them all. The left/right vectors ``u``, ``v`` are buffers (they persist
    between steps and in ``state_dict``), so one iteration per step tracks the slowly moving
    weights.

    Args:
        model: the network whose convolutions are penalised (kept by reference, not as a
            submodule: the penalty's ``state_dict`` holds only the vectors).
        init_iterations: iterations run once at construction so the first estimate is good.
        seed: seed of the random start vectors (reproducible checkpoints).

    Example:
        >>> sr = SpectralNormPenalty(nn.Conv2d(3, 8, 3), init_iterations=50)
        >>> penalty = sr(iterations=1)     # differentiable w.r.t. the conv weight
    """

    def __init__(self, model: nn.Module, init_iterations: int = 20, seed: int = 0) -> None:
        super().__init__()
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        by_shape: dict[tuple[int, int], list[nn.Conv2d]] = {}
        for conv in convs:
            w = conv.weight
            by_shape.setdefault((w.shape[0], w[0].numel()), []).append(conv)
        self._groups: list[list[nn.Conv2d]] = list(by_shape.values())
        gen = torch.Generator().manual_seed(seed)
        for k, ((rows, cols), group) in enumerate(by_shape.items()):
            device = group[0].weight.device
            u = F.normalize(torch.randn(len(group), rows, generator=gen), dim=1)
            v = F.normalize(torch.randn(len(group), cols, generator=gen), dim=1)
            self.register_buffer(f"u{k}", u.to(device))
            self.register_buffer(f"v{k}", v.to(device))
        if init_iterations > 0:
            self.power_iterate(init_iterations)

    def _weights(self, k: int) -> torch.Tensor:
        group = self._groups[k]
        return torch.stack([c.weight.reshape(c.weight.shape[0], -1) for c in group]).float()

    def _vectors(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        u, v = getattr(self, f"u{k}"), getattr(self, f"v{k}")
        if u.device != device:  # the model moved after the loss was built: follow it
            u, v = u.to(device), v.to(device)
            setattr(self, f"u{k}", u)
            setattr(self, f"v{k}", v)
        return u, v

    @torch.no_grad()
    def power_iterate(self, iterations: int = 1) -> None:
        """Refine the vectors in place (no gradient)."""
        for k in range(len(self._groups)):
            w = self._weights(k)
            u, v = self._vectors(k, w.device)
            for _ in range(iterations):
                v = F.normalize(torch.bmm(w.transpose(1, 2), u.unsqueeze(2)).squeeze(2), dim=1)
                u = F.normalize(torch.bmm(w, v.unsqueeze(2)).squeeze(2), dim=1)
            getattr(self, f"u{k}").copy_(u)
            getattr(self, f"v{k}").copy_(v)

    def singular_values(self) -> list[torch.Tensor]:
        """Current estimates ``u^T W v``, one ``(n_k,)`` tensor per shape group (with grad)."""
        out = []
        for k in range(len(self._groups)):
            w = self._weights(k)
            u, v = self._vectors(k, w.device)
            # clones: the next power step updates the buffers in place, which must not touch
            # tensors saved for this graph's backward (e.g. with gradient accumulation)
            out.append(torch.einsum("ni,nij,nj->n", u.clone(), w, v.clone()))
        return out

    def estimates(self) -> dict[nn.Conv2d, float]:
        """Largest singular value estimate per conv module (floats, for inspection)."""
        est: dict[nn.Conv2d, float] = {}
        with torch.no_grad():
            for group, sig in zip(self._groups, self.singular_values(), strict=False):
                est.update({c: float(s) for c, s in zip(group, sig, strict=False)})
        return est

    def forward(self, iterations: int = 1) -> torch.Tensor:
        """Run ``iterations`` power steps, then return ``sum_i s_i`` (0-dim, differentiable)."""
        if iterations > 0:
            self.power_iterate(iterations)
        sig = self.singular_values()
        if not sig:
            return torch.zeros(())
        return torch.cat(sig).sum()
