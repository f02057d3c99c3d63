"""NVAE: a deep hierarchical VAE over segmentation masks (Vahdat & Kautz 2020), in plain torch.

Written from the paper and ``SPEC.md`` §2–3 (the official code is under a non-commercial
licence and was not used). One model maps one-hot masks ``(B, in_channels, H, W)``
(4 channels, or 12 for the 3-gram input: previous/current/next slice stacked) to class logits
``(B, out_channels, H, W)`` through a hierarchy of latent groups.

Layout (defaults = the report's configuration, ``H = W = 128``)::

    x ─ stem conv3×3 (in→4) ─ pre-process: EncoderCell×pre_cells, DownCell   → 8 ch, 64²
      ─ encoder tower, bottom-up: scale 64² (1 group), Down, 32² (2), Down, 16² (4 groups),
        each group = EncoderCell×enc_cells; the feature after each group is kept
    h (learned constant, 32 ch, 16²) ─ decoder tower, top-down, group by group:
        state ← DecoderCell×dec_cells(state)                 (not before the first group)
        prior p(z_l|z_<l) = N(mu_p, sigma_p) ← ELU–conv3×3(state)  (group 0: N(0, I))
        posterior q = N(mu_p + d_mu, sigma_p·d_sigma) ← ELU–conv3×3(enc_feat + conv1×1(state))
        z ~ q ; state ← conv1×1(concat(state, z)) ; UpCell between scales
      ─ post-process: UpCell (sub-pixel ×2), DecoderCell×post_cells (default 0) → 4 ch, 128²
      ─ ELU–conv3×3 → logits

Conventions:
    * ``groups_per_scale`` is listed **top scale first** (coarsest resolution first, the order
      the decoder visits them): ``(4, 2, 1)`` puts 4 groups at 16², 2 at 32², 1 at 64².
      Scale index ``t`` (0 = top) is the index used by the loss's per-scale ``betas``.
    * Groups are numbered ``0..L-1`` top-down; ``forward`` returns the per-group KL in that
      order and ``group_scales[l]`` gives the scale of group ``l``.
    * The top group's prior is the standard normal ``N(0, I)`` (as in the paper), so its
      "residual" posterior is just ``N(d_mu, d_sigma)``.
    * The training draw (posterior sample and KL of every group) of a channels_last float32
      CPU pass runs on one kernel per group once :func:`acdctool.models.nvae_kernels.load`
      has succeeded; it computes what :mod:`acdctool.models.nvae_dist` does, from the same noise.
    * Channels double at every down-sampling and halve at every up-sampling; the image side
      must be divisible by ``2 ** (pre_blocks + scales - 1)`` (``ConfigError`` otherwise).

Example:
    >>> model = NVAE(image_size=32, scales=2, groups_per_scale=(2, 1))
    >>> out = model(torch.zeros(2, 4, 32, 32))
    >>> out.logits.shape, len(out.kl), out.kl[0].shape
    (torch.Size([2, 4, 32, 32]), 3, torch.Size([2]))
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acdctool.errors import BadInputError, ConfigError
from acdctool.models import nvae_kernels
from acdctool.models.nvae_cells import Conv1x1, Conv3x3, DecoderCell, DownCell, EncoderCell, UpCell
from acdctool.models.nvae_dist import Normal, randn_like

__all__ = ["NVAE", "NVAEOutput", "DECODE_MODES"]

DECODE_MODES = ("mean", "sample")
"""``mean``: every latent is its distribution's mean (deterministic); ``sample``: a draw with
the standard deviations multiplied by the temperature."""


@dataclass
class NVAEOutput:
    """What ``NVAE.forward`` returns.

    Attributes:
        logits: ``(B, out_channels, H, W)`` unnormalised class scores.
        kl: one ``(B,)`` float32 tensor per latent group (top-down order): the closed-form
            ``KL(q(z_l|x, z_<l) || p(z_l|z_<l))`` summed over the group's latent elements,
            in nats per sample.
        z: the latent draws, one ``(B, latent_channels, h_l, w_l)`` tensor per group.
    """

    logits: torch.Tensor
    kl: list[torch.Tensor]
    z: list[torch.Tensor]


def _sampler(cin: int, cout: int) -> nn.Sequential:
    """ELU–conv3×3: the head that turns a feature map into (d_)mu and (d_)log sigma."""
    return nn.Sequential(nn.ELU(), Conv3x3(cin, cout))


class NVAE(nn.Module):
    """Hierarchical VAE with residual-normal posteriors over segmentation masks.

    Args:
        in_channels: input channels (4 one-hot classes, or 12 for 3-gram input).
        out_channels: output classes (logits), default 4.
        image_size: side of the square input in pixels (the learned top constant depends on
            it); must be divisible by ``2 ** (pre_blocks + scales - 1)``.
        stem_channels: channels after the stem convolution (report: 4; 64 made the KL
            explode).
        scales: number of latent scales.
        groups_per_scale: latent groups per scale, **top (coarsest) scale first**; its length
            must equal ``scales``.
        latent_channels: channels of every latent group.
        pre_blocks: pre-processing blocks, each ending with a ×2 down-sampling.
        pre_cells: encoder cells before the down-sampling cell of each pre-processing block.
        enc_cells: encoder cells per latent group (bottom-up tower).
        dec_cells: decoder cells per latent group (top-down tower; none before group 0).
        post_blocks: post-processing blocks, each starting with a ×2 up-sampling cell.
        post_cells: decoder cells after the up-sampling cell of each post-processing block
            (default 0: a cell at full resolution costs about a fifth of the CPU throughput).
        se_reduction: channel reduction factor of squeeze-excitation (hidden ``max(C//r, 4)``).
        dec_expansion: width factor of the decoder cells' inverted residual.
        bn_momentum: batch-norm momentum (PyTorch convention: weight of the new batch).

    Raises:
        ConfigError: a size or count is not a positive integer, ``len(groups_per_scale) !=
            scales``, or ``image_size`` does not survive the down-samplings.

    Example:
        >>> model = NVAE(in_channels=12, image_size=64)
        >>> logits = model.reconstruct(torch.zeros(1, 12, 64, 64), mode="mean")
        >>> tuple(logits.shape)
        (1, 4, 64, 64)
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        image_size: int = 128,
        stem_channels: int = 4,
        scales: int = 3,
        groups_per_scale: Sequence[int] = (4, 2, 1),
        latent_channels: int = 20,
        pre_blocks: int = 1,
        pre_cells: int = 1,
        enc_cells: int = 2,
        dec_cells: int = 2,
        post_blocks: int = 1,
        post_cells: int = 0,
        se_reduction: int = 8,
        dec_expansion: int = 6,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        groups = tuple(groups_per_scale) if isinstance(groups_per_scale, Sequence) else ()
        self._args: dict[str, Any] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "image_size": image_size,
            "stem_channels": stem_channels,
            "scales": scales,
            "groups_per_scale": list(groups),
            "latent_channels": latent_channels,
            "pre_blocks": pre_blocks,
            "pre_cells": pre_cells,
            "enc_cells": enc_cells,
            "dec_cells": dec_cells,
            "post_blocks": post_blocks,
            "post_cells": post_cells,
            "se_reduction": se_reduction,
            "dec_expansion": dec_expansion,
            "bn_momentum": bn_momentum,
        }
        self._check_args(groups_per_scale)
        factor = 2 ** (pre_blocks + scales - 1)
        top_size = image_size // factor
        se, mom, exp = se_reduction, bn_momentum, dec_expansion

        # ---- bottom-up: stem, pre-processing, encoder tower -------------------------------
        c = stem_channels
        self.stem = Conv3x3(in_channels, c)
        pre: list[nn.Module] = []
        for _ in range(pre_blocks):
            pre += [EncoderCell(c, se, mom) for _ in range(pre_cells)]
            pre.append(DownCell(c, se, mom))
            c *= 2
        self.pre = nn.Sequential(*pre)

        groups_bottom_up = groups[::-1]
        self.enc_groups = nn.ModuleList()
        self.enc_down = nn.ModuleList()
        for s, n in enumerate(groups_bottom_up):
            for _ in range(n):
                self.enc_groups.append(nn.Sequential(*[EncoderCell(c, se, mom) for _ in range(enc_cells)]))
            if s < scales - 1:
                self.enc_down.append(DownCell(c, se, mom))
                c *= 2

        # ---- top-down: constant, per-group samplers and combiners, up-sampling -------------
        self.h = nn.Parameter(torch.randn(1, c, top_size, top_size))
        zc = latent_channels
        self.dec_groups = nn.ModuleList()  # cells before sampling group l (empty for l = 0)
        self.prior_net = nn.ModuleList()  # state -> (mu_p, log sigma_p); Identity for l = 0
        self.enc_combiner = nn.ModuleList()  # state -> added to the encoder feature
        self.post_net = nn.ModuleList()  # combined feature -> (d_mu, log d_sigma)
        self.dec_combiner = nn.ModuleList()  # concat(state, z) -> state
        self.dec_up = nn.ModuleList()
        group_scales: list[int] = []
        latent_shapes: list[tuple[int, int, int]] = []
        side = top_size
        for t, n in enumerate(groups):
            if t > 0:
                self.dec_up.append(UpCell(c, exp, se, mom))
                c //= 2
                side *= 2
            for _ in range(n):
                first = not group_scales
                if first:
                    self.dec_groups.append(nn.Identity())
                    self.prior_net.append(nn.Identity())
                    self.enc_combiner.append(nn.Identity())
                else:
                    self.dec_groups.append(nn.Sequential(*[DecoderCell(c, exp, se, mom) for _ in range(dec_cells)]))
                    self.prior_net.append(_sampler(c, 2 * zc))
                    self.enc_combiner.append(Conv1x1(c, c))
                self.post_net.append(_sampler(c, 2 * zc))
                self.dec_combiner.append(Conv1x1(c + zc, c))
                group_scales.append(t)
                latent_shapes.append((zc, side, side))

        post: list[nn.Module] = []
        for _ in range(post_blocks):
            post.append(UpCell(c, exp, se, mom))
            c //= 2
            post += [DecoderCell(c, exp, se, mom) for _ in range(post_cells)]
        self.post = nn.Sequential(*post)
        self.head = _sampler(c, out_channels)

        self.group_scales: tuple[int, ...] = tuple(group_scales)
        """Scale index (0 = top) of every latent group, top-down order."""
        self.latent_shapes: tuple[tuple[int, int, int], ...] = tuple(latent_shapes)
        """``(C, h, w)`` of every latent group, top-down order."""

    # ---- configuration ---------------------------------------------------------------------
    def _check_args(self, groups_per_scale: Any) -> None:
        a = self._args
        positive = (
            "in_channels", "out_channels", "image_size", "stem_channels", "scales",
            "latent_channels", "pre_blocks", "enc_cells", "se_reduction", "dec_expansion",
        )  # fmt: skip
        non_negative = ("pre_cells", "dec_cells", "post_blocks", "post_cells")
        for name in positive + non_negative:
            v = a[name]
            low = 1 if name in positive else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"NVAE {name} must be an integer >= {low}, got {v!r}")
        if a["post_blocks"] != a["pre_blocks"]:
            # the output must come back to the input resolution
            raise ConfigError(
                f"NVAE post_blocks ({a['post_blocks']}) must equal pre_blocks "
                f"({a['pre_blocks']}) so that the logits have the input's size"
            )
        g = a["groups_per_scale"]
        if (
            not isinstance(groups_per_scale, Sequence)
            or isinstance(groups_per_scale, str)
            or len(g) != a["scales"]
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in g)
        ):
            raise ConfigError(
                f"NVAE groups_per_scale must list one positive integer per scale "
                f"(scales={a['scales']}, top scale first), got {groups_per_scale!r}"
            )
        m = a["bn_momentum"]
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 < m <= 1.0:
            raise ConfigError(f"NVAE bn_momentum must be in (0, 1], got {m!r}")
        factor = 2 ** (a["pre_blocks"] + a["scales"] - 1)
        if a["image_size"] % factor:
            raise ConfigError(
                f"NVAE image_size {a['image_size']} must be divisible by {factor} "
                f"(2^(pre_blocks + scales - 1) down-samplings); use a multiple of {factor} "
                f"or fewer scales"
            )

    @property
    def args(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-safe dict: ``NVAE.from_args(m.args)`` rebuilds it."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._args.items()}

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> NVAE:
        """Build a model from a dict of constructor arguments (e.g. read from a checkpoint).

        Raises:
            ConfigError: unknown keys, or any invalid value (see the constructor).
        """
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"unknown NVAE argument(s) {unknown}; known: {sorted(known)}")
        kwargs = dict(args)
        if isinstance(kwargs.get("groups_per_scale"), list):
            kwargs["groups_per_scale"] = tuple(kwargs["groups_per_scale"])
        return cls(**kwargs)

    @property
    def num_groups(self) -> int:
        return len(self.group_scales)

    # ---- towers ----------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        a = self._args
        expected = (a["in_channels"], a["image_size"], a["image_size"])
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise BadInputError(
                f"NVAE expects input (B, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up features, one per latent group, **bottom-up order** (finest first).

        Shapes:
            ``x``: ``(B, in_channels, H, W)``; feature ``i``: ``(B, C_s, H_s, W_s)`` of the
            scale of group ``L - 1 - i``.
        """
        self._check_input(x)
        s = self.pre(self.stem(x))
        feats: list[torch.Tensor] = []
        i = 0
        groups_bottom_up = self._args["groups_per_scale"][::-1]
        for si, n in enumerate(groups_bottom_up):
            for _ in range(n):
                s = self.enc_groups[i](s)
                feats.append(s)
                i += 1
            if si < len(self.enc_down):
                s = self.enc_down[si](s)
        return feats

    def _top_down(
        self,
        feats: list[torch.Tensor] | None,
        batch: int,
        mode: str,
        temperature: float,
        generator: torch.Generator | None,
        compute_kl: bool = True,
        toward_prior: float = 0.0,
    ) -> NVAEOutput:
        """Run the decoder; with ``feats`` use posteriors (and compute KL), else the prior.

        ``toward_prior`` α (``mode="mean"`` with ``feats``): every group takes
        ``(1 − α) · posterior mean + α · prior mean``, its prior conditioned on the groups above.
        """
        if mode not in DECODE_MODES:
            raise ConfigError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
        state = self.h.expand(batch, -1, -1, -1)
        feats_td = feats[::-1] if feats is not None else None
        kls: list[torch.Tensor] = []
        zs: list[torch.Tensor] = []
        for g, t in enumerate(self.group_scales):
            if g > 0 and t != self.group_scales[g - 1]:
                state = self.dec_up[t - 1](state)
            prior_params = None
            if g > 0:
                state = self.dec_groups[g](state)
                prior_params = self.prior_net[g](state)
            post_params = None
            if feats_td is not None:
                combined = feats_td[g] if g == 0 else feats_td[g] + self.enc_combiner[g](state)
                post_params = self.post_net[g](combined)
                if mode == "sample" and compute_kl and nvae_kernels.latent_usable(post_params, prior_params):
                    # the training draw: one CPU kernel for the clamps, the sample and the KL
                    eps = randn_like(post_params.new_empty((batch, *self.latent_shapes[g])), generator)
                    if temperature != 1.0:
                        eps = eps * temperature
                    z, kl = nvae_kernels.latent_sample_kl(prior_params, post_params, eps)
                    kls.append(kl)
                    zs.append(z)
                    state = self.dec_combiner[g](torch.cat([state, z], dim=1))
                    continue
            if prior_params is None:
                prior = Normal.standard(state.new_zeros((batch, *self.latent_shapes[0])))
            else:
                prior = Normal.from_params(prior_params)
            if post_params is None:
                dist = prior
            else:
                dist = prior.residual(post_params)
                if compute_kl:
                    kls.append(dist.kl(prior).sum(dim=(1, 2, 3)))
            if mode == "sample":
                z = dist.sample(temperature, generator)
            elif toward_prior and feats_td is not None:
                z = torch.lerp(dist.mu, prior.mu, toward_prior)
            else:
                z = dist.mu
            zs.append(z)
            state = self.dec_combiner[g](torch.cat([state, z.to(state.dtype)], dim=1))
        logits = self.head(self.post(state))
        return NVAEOutput(logits=logits, kl=kls, z=zs)

    # ---- public entry points ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> NVAEOutput:
        """Training pass: encode, draw every latent from its posterior (temperature 1).

        Args:
            x: ``(B, in_channels, H, W)`` one-hot (or 3-gram stacked one-hot) masks, float.

        Returns:
            ``NVAEOutput`` with ``logits (B, out_channels, H, W)``, per-group ``kl`` (``(B,)``
            nats each, top-down) and latents ``z``.

        Raises:
            BadInputError: ``x`` is not ``(B, in_channels, image_size, image_size)``.
        """
        return self._top_down(self.encode(x), x.shape[0], "sample", 1.0, None)

    def reconstruct(
        self,
        x: torch.Tensor,
        mode: str = "mean",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reconstruct masks through the posterior; returns logits ``(B, out_channels, H, W)``.

        ``mode="mean"`` uses every posterior mean (deterministic: the refinement default);
        ``mode="sample"`` draws with the standard deviations scaled by ``temperature``, from
        ``generator`` when given (same seed, same output). The caller chooses train/eval mode
        and grad mode (use ``model.eval()`` and ``torch.inference_mode()`` to refine).
        ``logits.argmax(1)`` gives the label map.
        """
        return self.decode(self.encode(x), mode, temperature, generator)

    def decode(
        self,
        feats: list[torch.Tensor],
        mode: str = "mean",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        toward_prior: float = 0.0,
    ) -> torch.Tensor:
        """Decode :meth:`encode`'s features through the posterior; logits ``(B, out_channels, H, W)``.

        ``reconstruct(x, ...)`` is ``decode(encode(x), ...)``: encode once to decode several
        ways. ``toward_prior`` α in [0, 1] (``mode="mean"`` only) walks from the input's own
        encoding (α = 0: every posterior mean) towards the model's mean shape (α = 1: every
        conditional prior mean), group by group: ``z_l = (1 − α) · mu_q + α · mu_p``.

        Example:
            >>> model = NVAE(image_size=32, scales=2, groups_per_scale=(1, 1)).eval()
            >>> x = torch.zeros(1, 4, 32, 32)
            >>> torch.equal(model.decode(model.encode(x)), model.reconstruct(x))
            True
        """
        if not 0.0 <= toward_prior <= 1.0:
            raise ConfigError(f"toward_prior must be within [0, 1], got {toward_prior}")
        batch = feats[0].shape[0]
        return self._top_down(feats, batch, mode, temperature, generator, False, toward_prior).logits

    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        mode: str = "sample",
    ) -> torch.Tensor:
        """Ancestral samples from the prior; returns logits ``(n, out_channels, H, W)``."""
        if n < 1:
            raise ConfigError(f"number of samples must be >= 1, got {n}")
        return self._top_down(None, n, mode, temperature, generator, compute_kl=False).logits
