"""The NVAE training objective: reconstruction plus β-weighted KL with warm-up and balancing.

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
                   conv weight, by power iteration with persistent vectors
                   (:class:`~acdctool.models.nvae_penalties.SpectralNormPenalty`)
``BN``             batch-norm scale penalty ``sum_layers max_c |gamma_c|``
                   (:func:`~acdctool.models.nvae_penalties.bn_scale_penalty`)
=================  ========================================================================

``NVAELoss.forward`` returns the total and a dict of **detached 0-dim tensors** (no device
sync; call ``float()`` when logging) with keys ``loss, recon, dice, kl, kl_scale0 ..
kl_scale{S-1}, kl_weighted, kl_coeff, nelbo, sr, bn``;
:func:`acdctool.models.nvae_guard.check_finite` names the first bad one and what to change.

Settings: the stage's :class:`acdctool.config.TrainNvaeConfig` is the one home of their defaults;
:meth:`NVAELossConfig.from_config` takes them from it.

Checkpointing: the power-iteration vectors are buffers of ``NVAELoss`` (present only when
``sr_weight > 0``); save ``loss.state_dict()`` next to the model's to resume exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from acdctool.errors import BadInputError, ConfigError
from acdctool.models.nvae import NVAE, NVAEOutput
from acdctool.models.nvae_penalties import SpectralNormPenalty, bn_scale_penalty

if TYPE_CHECKING:
    from acdctool.config import TrainNvaeConfig

__all__ = ["NVAELossConfig", "NVAELoss", "kl_coefficient", "kl_balance_coefficients"]

KL_FLOOR = 1e-4
"""KL coefficient at step 0 of the warm-up (not a stage option)."""


@dataclass(frozen=True)
class NVAELossConfig:
    """Weights and schedules of the NVAE loss.

    The five stage settings have no defaults here: :class:`acdctool.config.TrainNvaeConfig`
    is their one home (build with :meth:`from_config`). The other three are loss internals that
    no command exposes.

    Attributes:
        betas: KL weight per scale, top scale first (length = the model's ``scales``).
        warmup_steps: optimiser steps of linear KL warm-up (0: no warm-up).
        kl_balance: apply KL balancing during warm-up.
        dice_weight: weight of the soft-Dice term (0: not computed).
        sr_weight: λ of the spectral regularisation (0: off, no power iteration).
        kl_floor: KL coefficient at step 0.
        bn_weight: weight of the BN-scale penalty; ``None`` means ``sr_weight``.
        sr_iterations: power iterations per training step (1 is enough once warm, since the
            vectors persist between steps).
    """

    betas: tuple[float, ...]
    warmup_steps: int
    kl_balance: bool
    dice_weight: float
    sr_weight: float
    kl_floor: float = KL_FLOOR
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

    @classmethod
    def from_config(cls, config: TrainNvaeConfig) -> NVAELossConfig:
        """The loss settings of a ``train-nvae`` config (β, KL warm-up and balancing, Dice, SR).

        Example:
            >>> from acdctool.config import TrainNvaeConfig
            >>> NVAELossConfig.from_config(TrainNvaeConfig()).betas
            (8.0, 10.0, 11.0)
        """
        return cls(
            betas=tuple(config.betas),
            warmup_steps=config.warmup_steps,
            kl_balance=config.kl_balance,
            dice_weight=config.dice_weight,
            sr_weight=config.sr_weight,
        )

    @property
    def effective_bn_weight(self) -> float:
        return self.sr_weight if self.bn_weight is None else self.bn_weight


def kl_coefficient(step: int, warmup_steps: int, floor: float = KL_FLOOR) -> float:
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
        config: an ``NVAELossConfig`` (from the stage config: :meth:`NVAELossConfig.from_config`).

    Raises:
        ConfigError: ``len(config.betas) != model.args["scales"]``.

    Shapes:
        ``forward(output, target, step)``: ``output.logits (B, C, H, W)``; ``target`` labels
        ``(B, H, W)`` (int) or one-hot ``(B, C, H, W)``; ``step`` the optimiser step count
        (drives the warm-up). Returns ``(loss 0-dim, terms dict of 0-dim detached tensors)``.

    Example:
        >>> model = NVAE(image_size=32, scales=2, groups_per_scale=(2, 1))
        >>> config = NVAELossConfig(betas=(1, 1), warmup_steps=100, kl_balance=True, dice_weight=0, sr_weight=0)
        >>> x = torch.zeros(2, 4, 32, 32); x[:, 0] = 1
        >>> loss, terms = NVAELoss(model, config)(model(x), x, step=0)
        >>> sorted(terms)[:4]
        ['bn', 'dice', 'kl', 'kl_coeff']
    """

    group_beta: torch.Tensor  # (L,) β of each latent group's scale
    group_scale: torch.Tensor  # (L,) scale index of each group
    group_size: torch.Tensor  # (L,) latent elements of each group

    def __init__(self, model: NVAE, config: NVAELossConfig) -> None:
        super().__init__()
        self.config = config
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
