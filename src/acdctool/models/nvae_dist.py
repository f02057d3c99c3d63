"""Diagonal normal distributions of the NVAE latents: soft clamping, residual posterior, KL.

NVAE (Vahdat & Kautz 2020, §3.2) parameterises the approximate posterior *relative to* the
prior of the same group::

    p(z_l | z_<l)    = N(mu_p, sigma_p)
    q(z_l | z_<l, x) = N(mu_p + d_mu, sigma_p * d_sigma)

so that when the prior moves the posterior follows, and the KL only depends on the deltas::

    KL(q || p) = 1/2 * (d_mu**2 / sigma_p**2 + d_sigma**2 - log(d_sigma**2) - 1)

Every location and log-scale that a network outputs goes through ``soft_clamp`` first
(``5 * tanh(x / 5)``): it is the identity near 0 and bounds ``|mu|`` and ``|log sigma|`` by 5,
which keeps ``exp`` and the squared ratios in the KL finite when a layer blows up.

All functions are element-wise on tensors of any shape (latents are ``(B, C, H, W)``); KL
values are in nats per latent element, computed in float32 whatever the input dtype (so that
mixed-precision training does not lose the KL in bf16 rounding).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "CLAMP_BOUND",
    "soft_clamp",
    "Normal",
    "ResidualNormal",
    "kl_normal",
    "kl_residual",
    "randn_like",
]

CLAMP_BOUND = 5.0
"""Soft bound on locations and log-scales: ``|soft_clamp(x)| < CLAMP_BOUND``."""


def soft_clamp(x: torch.Tensor, bound: float = CLAMP_BOUND) -> torch.Tensor:
    """``bound * tanh(x / bound)``: identity near 0, smooth, and bounded by ``bound``."""
    return bound * torch.tanh(x / bound)


def randn_like(ref: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``ref``, optionally drawn from a seeded generator.

    The generator may live on another device than ``ref`` (a CPU generator for a CUDA model):
    the noise is then drawn on the generator's device and moved, so that a seed reproduces
    the same draw whatever the model's device.
    """
    # Drawn in logical (NCHW) order whatever ``ref``'s memory format: randn_like on a
    # channels_last tensor would fill it in memory order and give every latent element another
    # value than the same seed gives in NCHW; the copy to ``ref``'s layout is cheap.
    layout = (
        torch.channels_last
        if ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous()
        else torch.contiguous_format
    )
    if generator is None:
        noise = torch.randn(ref.shape, device=ref.device, dtype=ref.dtype)
    else:
        noise = torch.randn(ref.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=ref.device, dtype=ref.dtype).contiguous(memory_format=layout)


def kl_normal(
    mu_q: torch.Tensor,
    log_sigma_q: torch.Tensor,
    mu_p: torch.Tensor,
    log_sigma_p: torch.Tensor,
) -> torch.Tensor:
    """Element-wise ``KL(N(mu_q, sigma_q) || N(mu_p, sigma_p))`` in nats (float32).

    ``log(sigma_p / sigma_q) + (sigma_q**2 + (mu_q - mu_p)**2) / (2 sigma_p**2) - 1/2``,
    written with log-scales so that tiny scales lose no precision.
    """
    mu_q, log_sigma_q = mu_q.float(), log_sigma_q.float()
    mu_p, log_sigma_p = mu_p.float(), log_sigma_p.float()
    log_ratio = log_sigma_q - log_sigma_p
    z = (mu_q - mu_p) * torch.exp(-log_sigma_p)
    return 0.5 * (z * z + torch.exp(2.0 * log_ratio)) - 0.5 - log_ratio


def kl_residual(delta_mu: torch.Tensor, delta_log_sigma: torch.Tensor, log_sigma_p: torch.Tensor) -> torch.Tensor:
    """The NVAE closed form ``1/2 (d_mu²/sigma_p² + d_sigma² − log d_sigma² − 1)`` (float32).

    Equal to ``kl_normal(mu_p + d_mu, log_sigma_p + log d_sigma, mu_p, log_sigma_p)`` for any
    ``mu_p``; kept separate so tests can check the two against each other.
    """
    delta_mu, delta_log_sigma = delta_mu.float(), delta_log_sigma.float()
    var_p = torch.exp(2.0 * log_sigma_p.float())
    d_var = torch.exp(2.0 * delta_log_sigma)
    return 0.5 * (delta_mu * delta_mu / var_p + d_var - 2.0 * delta_log_sigma - 1.0)


class Normal:
    """A diagonal normal ``N(mu, exp(log_sigma))`` with reparameterised sampling.

    Args:
        mu: locations, any shape (latents: ``(B, C, H, W)``).
        log_sigma: log standard deviations, same shape as ``mu``.

    Example:
        >>> prior = Normal.from_params(torch.zeros(2, 8, 4, 4))  # 8 = 2 × 4 latent channels
        >>> post = prior.residual(torch.zeros(2, 8, 4, 4))
        >>> post.kl(prior).shape
        torch.Size([2, 4, 4, 4])
    """

    __slots__ = ("mu", "log_sigma")

    def __init__(self, mu: torch.Tensor, log_sigma: torch.Tensor) -> None:
        self.mu = mu
        self.log_sigma = log_sigma

    @classmethod
    def from_params(cls, params: torch.Tensor, bound: float = CLAMP_BOUND) -> Normal:
        """Split ``(B, 2C, H, W)`` network output into soft-clamped ``mu`` and ``log_sigma``."""
        mu, log_sigma = params.chunk(2, dim=1)
        return cls(soft_clamp(mu, bound), soft_clamp(log_sigma, bound))

    @classmethod
    def standard(cls, like: torch.Tensor) -> Normal:
        """``N(0, 1)`` with the shape, dtype and device of ``like``."""
        zeros = torch.zeros_like(like)
        return cls(zeros, zeros)

    def residual(self, delta_params: torch.Tensor, bound: float = CLAMP_BOUND) -> Normal:
        """The residual posterior ``N(mu + d_mu, sigma * d_sigma)`` around this prior.

        Args:
            delta_params: ``(B, 2C, H, W)``, first half ``d_mu``, second ``log d_sigma``;
                both soft-clamped.
        """
        d_mu, d_log_sigma = delta_params.chunk(2, dim=1)
        return ResidualNormal(self, soft_clamp(d_mu, bound), soft_clamp(d_log_sigma, bound))

    @property
    def sigma(self) -> torch.Tensor:
        return torch.exp(self.log_sigma)

    def sample(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw ``mu + temperature * sigma * eps`` (differentiable)."""
        eps = randn_like(self.mu, generator)
        if temperature != 1.0:
            eps = eps * temperature
        return self.mu + self.sigma * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Element-wise log density of ``z`` in nats (float32)."""
        u = (z.float() - self.mu.float()) * torch.exp(-self.log_sigma.float())
        return -0.5 * u * u - self.log_sigma.float() - 0.5 * math.log(2.0 * math.pi)

    def kl(self, other: Normal) -> torch.Tensor:
        """Element-wise ``KL(self || other)`` in nats (float32)."""
        return kl_normal(self.mu, self.log_sigma, other.mu, other.log_sigma)


class ResidualNormal(Normal):
    """``N(mu_p + d_mu, sigma_p * d_sigma)``: a posterior that remembers its prior and deltas.

    Its KL against that prior uses the closed form ``kl_residual`` on the deltas themselves,
    which stays exact under mixed precision (``mu_q - mu_p`` recomputed from bf16-rounded
    locations would not).

    Args:
        prior: the ``Normal`` it is relative to.
        delta_mu: ``d_mu``, same shape as the prior's parameters.
        delta_log_sigma: ``log d_sigma``, same shape.
    """

    __slots__ = ("prior", "delta_mu", "delta_log_sigma")

    def __init__(self, prior: Normal, delta_mu: torch.Tensor, delta_log_sigma: torch.Tensor) -> None:
        super().__init__(prior.mu + delta_mu, prior.log_sigma + delta_log_sigma)
        self.prior = prior
        self.delta_mu = delta_mu
        self.delta_log_sigma = delta_log_sigma

    def kl(self, other: Normal) -> torch.Tensor:
        if other is self.prior:
            return kl_residual(self.delta_mu, self.delta_log_sigma, self.prior.log_sigma)
        return super().kl(other)
