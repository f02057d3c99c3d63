"""The NVAE training objective and its stability guard.

``loss = recon + dice_weight * dice
         + kl_coeff(step) * sum_l beta[scale(l)] * gamma_l * KL_l
         + sr_weight * SR + bn_weight * BN``

=================  ========================================================================
term               definition (all per slice, averaged over the batch)
=================  ========================================================================
``recon``          categorical cross-entropy of the logits against the target, **summed over
                   pixels** (nats per slice), then averaged over the batch
``dice``           ``1 - mean soft Dice`` over the foreground classes (unitless, in [0, 1]);
                   note its scale differs from ``recon`` by about H·W, so useful weights are
                   large (e.g. 1e3 at 128²)
``KL_l``           closed-form KL of latent group ``l`` (nats per slice, from ``NVAEOutput``)
``beta``           one weight per scale, **top (coarsest) scale first**, the order of
                   ``NVAE(groups_per_scale=...)``: ``betas=(8, 10, 11)`` puts 8 on the 16²
                   groups, 10 on 32², 11 on 64² for the report's model at 128²
``kl_coeff``       linear warm-up ``floor + (1 - floor) * min(1, step / warmup_steps)``
``gamma_l``        KL balancing (NVAE paper, App. A): during warm-up each group's KL is
                   multiplied by ``gamma_l ∝ mean_batch |KL_l| / n_l`` (``n_l`` its number of
                   latent elements), normalised so the gammas sum to the number of groups; a
                   group that uses few latents is pushed less, one that uses many more. We fade
                   the balancing out linearly with the warm-up progress ``p``:
                   ``(1 - p) * gamma_l + p``, so the objective is the plain β-ELBO after it
``SR``             spectral regularisation: ``sum_i s_i``, the largest singular value of every
                   conv weight (reshaped to ``(out, in·k·k)``), by power iteration with
                   persistent vectors (``SpectralNormPenalty``)
``BN``             batch-norm scale penalty: ``sum_layers max_c |gamma_c|``, the norm of the
                   (diagonal) map of each BN layer, so the eval-mode network cannot grow its
                   gain through BN scales while SR holds the convs
=================  ========================================================================

``NVAELoss.forward`` returns the total and a dict of **detached 0-dim tensors** (no device
sync; call ``float()`` when logging) with keys ``loss, recon, dice, kl, kl_scale0 ..
kl_scale{S-1}, kl_weighted, kl_coeff, nelbo, sr, bn``. ``check_finite(terms)`` raises
``TrainingDivergedError`` naming the first bad term and what to change.

Checkpointing: the power-iteration vectors are buffers of ``NVAELoss`` (present only when
``sr_weight > 0``); save ``loss.state_dict()`` next to the model's to resume exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from acdctool.errors import BadInputError, ConfigError, TrainingDivergedError
from acdctool.models.nvae import NVAE, NVAEOutput

__all__ = [
    "NVAELossConfig",
    "NVAELoss",
    "SpectralNormPenalty",
    "bn_scale_penalty",
    "kl_coefficient",
    "kl_balance_coefficients",
    "check_finite",
]


@dataclass(frozen=True)
class NVAELossConfig:
    """Weights and schedules of the NVAE loss (defaults: the report's settings, no SR).

    Attributes:
        betas: KL weight per scale, top scale first (length = the model's ``scales``).
        warmup_steps: optimiser steps of linear KL warm-up (0: no warm-up).
        kl_floor: KL coefficient at step 0.
        kl_balance: apply KL balancing during warm-up.
        dice_weight: weight of the soft-Dice term (0: not computed).
        sr_weight: λ of the spectral regularisation (0: off, no power iteration).
        bn_weight: weight of the BN-scale penalty; ``None`` means ``sr_weight``.
        sr_iterations: power iterations per training step (1 is enough once warm, since the
            vectors persist between steps).
    """

    betas: tuple[float, ...] = (8.0, 10.0, 11.0)
    warmup_steps: int = 6420
    kl_floor: float = 1e-4
    kl_balance: bool = True
    dice_weight: float = 0.0
    sr_weight: float = 0.0
    bn_weight: float | None = None
    sr_iterations: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.betas or any(not math.isfinite(b) or b < 0 for b in self.betas):
            raise ConfigError(f"betas must be finite and >= 0, got {self.betas}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.kl_floor <= 1.0:
            raise ConfigError(f"kl_floor must be in [0, 1], got {self.kl_floor}")
        for name in ("dice_weight", "sr_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bn_weight is not None and self.bn_weight < 0:
            raise ConfigError(f"bn_weight must be >= 0, got {self.bn_weight}")
        if self.sr_iterations < 1:
            raise ConfigError(f"sr_iterations must be >= 1, got {self.sr_iterations}")

    @property
    def effective_bn_weight(self) -> float:
        return self.sr_weight if self.bn_weight is None else self.bn_weight

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``betas`` as a list)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NVAELossConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown NVAE loss setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


def kl_coefficient(step: int, warmup_steps: int, floor: float = 1e-4) -> float:
    """Linear KL warm-up: ``floor`` at step 0, 1 from ``warmup_steps`` on."""
    if warmup_steps <= 0:
        return 1.0
    return floor + (1.0 - floor) * min(1.0, max(step, 0) / warmup_steps)


def kl_balance_coefficients(kl: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """NVAE KL-balancing coefficients (detached), summing to the number of groups.

    Args:
        kl: ``(B, L)`` per-sample KL of every group (nats).
        sizes: ``(L,)`` number of latent elements of every group.

    Returns:
        ``(L,)`` float32, ``gamma_l = L * w_l / sum(w)`` with ``w_l = mean_B |KL_l| / n_l``.
    """
    w = kl.detach().float().abs().mean(dim=0) / sizes.float()
    w = w + 1e-12  # all-zero KL (e.g. at init with zeroed deltas) gives equal coefficients
    return w.numel() * w / w.sum()


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
            submodule: the loss's ``state_dict`` holds only the vectors).
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


def _recon(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample CE summed over pixels: labels ``(B,H,W)`` or (soft) one-hot ``(B,C,H,W)``."""
    logits = logits.float()
    if target.dim() == 3:
        ce = F.cross_entropy(logits, target.long(), reduction="none")
    elif target.dim() == 4 and target.shape[1] == logits.shape[1]:
        ce = -(target.float() * F.log_softmax(logits, dim=1)).sum(dim=1)
    else:
        raise BadInputError(
            f"target must be labels (B, H, W) or one-hot (B, {logits.shape[1]}, H, W), got {tuple(target.shape)}"
        )
    return ce.flatten(1).sum(dim=1)


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``1 - mean soft Dice`` over foreground classes 1..C-1 (smoothing 1 px)."""
    n_classes = logits.shape[1]
    prob = torch.softmax(logits.float(), dim=1)
    if target.dim() == 3:
        onehot = F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).float()
    else:
        onehot = target.float()
    p, t = prob[:, 1:].flatten(2), onehot[:, 1:].flatten(2)
    dice = (2.0 * (p * t).sum(-1) + 1.0) / (p.sum(-1) + t.sum(-1) + 1.0)
    return 1.0 - dice.mean(dim=1)


class NVAELoss(nn.Module):
    """β-weighted hierarchical NVAE objective with warm-up, balancing, SR and BN penalties.

    Args:
        model: the ``NVAE`` being trained (needed for its group→scale map, group sizes and,
            when ``sr_weight > 0``, its conv and BN weights).
        config: an ``NVAELossConfig``.

    Raises:
        ConfigError: ``len(config.betas) != model.args["scales"]``.

    Shapes:
        ``forward(output, target, step)``: ``output.logits (B, C, H, W)``; ``target`` labels
        ``(B, H, W)`` (int) or one-hot ``(B, C, H, W)``; ``step`` the optimiser step count
        (drives the warm-up). Returns ``(loss 0-dim, terms dict of 0-dim detached tensors)``.

    Example:
        >>> model = NVAE(image_size=32, scales=2, groups_per_scale=(2, 1))
        >>> loss_fn = NVAELoss(model, NVAELossConfig(betas=(1.0, 1.0), warmup_steps=100))
        >>> x = torch.zeros(2, 4, 32, 32); x[:, 0] = 1
        >>> loss, terms = loss_fn(model(x), x, step=0)
        >>> check_finite(terms)
    """

    def __init__(self, model: NVAE, config: NVAELossConfig | None = None) -> None:
        super().__init__()
        self.config = config or NVAELossConfig()
        scales = model.args["scales"]
        if len(self.config.betas) != scales:
            raise ConfigError(
                f"betas has {len(self.config.betas)} values but the model has {scales} "
                f"scales (give one beta per scale, top scale first)"
            )
        self._model = [model]  # a list: keep the reference without registering a submodule
        self.num_scales = scales
        self.register_buffer(
            "group_beta",
            torch.tensor([self.config.betas[t] for t in model.group_scales]),
            persistent=False,
        )
        self.register_buffer("group_scale", torch.tensor(model.group_scales, dtype=torch.long), persistent=False)
        self.register_buffer(
            "group_size",
            torch.tensor([float(math.prod(s)) for s in model.latent_shapes]),
            persistent=False,
        )
        self.sr = SpectralNormPenalty(model) if self.config.sr_weight > 0 else None

    def forward(
        self, output: NVAEOutput, target: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        logits = output.logits
        recon = _recon(logits, target).mean()
        zero = recon.new_zeros(())
        dice = _soft_dice_loss(logits, target).mean() if cfg.dice_weight > 0 else zero

        kl = torch.stack(output.kl, dim=1)  # (B, L), float32
        kl_mean = kl.mean(dim=0)  # (L,)
        coeff = kl_coefficient(step, cfg.warmup_steps, cfg.kl_floor)
        weights = self.group_beta.to(kl.device)
        if cfg.kl_balance and cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            progress = max(step, 0) / cfg.warmup_steps
            gamma = kl_balance_coefficients(kl, self.group_size.to(kl.device))
            weights = weights * ((1.0 - progress) * gamma + progress)
        kl_weighted = coeff * (weights * kl_mean).sum()

        loss = recon + kl_weighted
        if cfg.dice_weight > 0:
            loss = loss + cfg.dice_weight * dice
        model = self._model[0]
        sr = zero
        if self.sr is not None:
            # power steps only while training: validation must not move the vectors
            sr = self.sr(cfg.sr_iterations if model.training else 0)
            loss = loss + cfg.sr_weight * sr
        bn = zero
        if cfg.effective_bn_weight > 0:
            bn = bn_scale_penalty(model).to(loss.device)
            loss = loss + cfg.effective_bn_weight * bn

        per_scale = torch.zeros(self.num_scales, device=kl.device).index_add_(
            0, self.group_scale.to(kl.device), kl_mean.detach()
        )
        kl_total = kl_mean.detach().sum()
        terms = {
            "loss": loss.detach(),
            "recon": recon.detach(),
            "dice": dice.detach(),
            "kl": kl_total,
            **{f"kl_scale{t}": per_scale[t] for t in range(self.num_scales)},
            "kl_weighted": kl_weighted.detach(),
            "kl_coeff": torch.tensor(coeff),
            "nelbo": recon.detach() + kl_total,
            "sr": sr.detach(),
            "bn": bn.detach(),
        }
        return loss, terms


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
