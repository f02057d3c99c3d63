"""Building blocks of the NVAE towers: squeeze-excitation and the four residual cells.

Written from the NVAE paper (Vahdat & Kautz 2020, Fig. 3 and §3.1), not from its code.

=====================  ===================================================================
cell                   body (the residual branch; output is ``skip + 0.1 * body``)
=====================  ===================================================================
``EncoderCell``        BN–Swish–conv3×3–BN–Swish–conv3×3–SE (same channels, same size)
``DownCell``           as ``EncoderCell`` with the first conv stride 2 and C→2C; skip is a
                       2×2 stride-2 conv (C→2C), a linear map that sees every input pixel
``DecoderCell``        BN–conv1×1 (C→E·C)–BN–Swish–depthwise conv5×5–BN–Swish–conv1×1
                       (E·C→C)–BN–SE, the paper's inverted residual (same channels, size)
``UpCell``             the ``DecoderCell`` body at the input resolution with the last 1×1 conv
                       C→2C, then a sub-pixel (pixel-shuffle) ×2 up-sampling to C/2 channels,
                       then SE; skip is conv1×1 (C→C/2) then nearest ×2 up-sampling
=====================  ===================================================================

Why sub-pixel up-sampling: running the expanded (E·C channels) body at the low resolution and
shuffling its output to the high one costs a quarter of up-sampling first, and unlike a nearest
up-sampling of the body's output it still lets every output pixel differ (no 2×2 blocks).

Why ``0.1``: scaling the residual branch keeps every cell close to the identity at
initialisation, so the deep hierarchy starts stable (one of the official stabilisers, SPEC §3).

All tensors are ``(B, C, H, W)``; the cells work with either memory format. With channels_last
input (the training step's) some layers take faster CPU paths with the same parameters, so the
same ``state_dict``: :class:`Conv1x1` runs as a matrix product on the NHWC view, and
:class:`Conv3x3`, :class:`DepthwiseConv` and :class:`BatchNormSiLU` on the CPU kernels of
:mod:`acdctool.models.nvae_kernels` once they are loaded; the middle of the decoder and
up-sampling cells (BN–Swish–depthwise–BN–Swish) then runs as one kernel that never stores its
first activation. A ``BatchNormSiLU`` is followed by an
``nn.Identity`` where the ``nn.SiLU`` used to be, so every layer keeps its ``nn.Sequential`` index
and ``state_dict`` key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acdctool.models import nvae_kernels

__all__ = [
    "RESIDUAL_SCALE",
    "Conv1x1",
    "Conv3x3",
    "DepthwiseConv",
    "BatchNormSiLU",
    "SqueezeExcitation",
    "EncoderCell",
    "DownCell",
    "DecoderCell",
    "UpCell",
]

RESIDUAL_SCALE = 0.1
"""Weight of the residual branch: ``out = skip + RESIDUAL_SCALE * body(x)``."""

_SE_MIN_HIDDEN = 4  # with 4–8 channels, C // 8 would leave 0–1 hidden units: keep a floor


class Conv1x1(nn.Conv2d):
    """A 1×1 convolution (an ``nn.Conv2d``: same parameters and ``state_dict`` keys) that runs
    as ``F.linear`` on the NHWC view of a channels_last input.

    On CPU, torch sends 1×1 convolutions to its slow NCHW im2col path, so inside a
    channels_last network each one also cost two layout transposes; the matrix product on the
    NHWC view needs none and is 1.4–1.9× faster on its own. Other inputs (NCHW, CUDA) take
    ``nn.Conv2d``'s own forward.

    Example:
        >>> conv = Conv1x1(8, 4)
        >>> x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
        >>> bool(torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias), atol=1e-6))
        True
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
            return y.permute(0, 3, 1, 2)
        return super().forward(x)


class Conv3x3(nn.Conv2d):
    """A 3×3 convolution, stride 1, padding 1 (an ``nn.Conv2d``: same parameters, initialisation
    and ``state_dict`` keys), on the CPU kernel of :mod:`acdctool.models.nvae_kernels` where it
    applies (:func:`~acdctool.models.nvae_kernels.conv3x3_usable`: 4 or 8 output channels and a
    multiple of them in, where oneDNN's channels_last paths are up to 4× slower, or 16 to 48 and
    a multiple of 8 in, the latent heads and the encoder cells), else ``nn.Conv2d``'s own forward.

    Example:
        >>> Conv3x3(4, 8, bias=False).weight.shape
        torch.Size([8, 4, 3, 3])
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if nvae_kernels.conv3x3_usable(x, self):
            return nvae_kernels.conv3x3(x, self.weight, self.bias)
        return super().forward(x)


class DepthwiseConv(nn.Conv2d):
    """Depthwise K×K convolution (``groups = channels``, padding K//2, no bias; an
    ``nn.Conv2d``), on the CPU kernel of :mod:`acdctool.models.nvae_kernels` where it applies
    (:func:`~acdctool.models.nvae_kernels.dwconv_usable`), else ``nn.Conv2d``'s own forward.

    Example:
        >>> DepthwiseConv(48, 5).weight.shape
        torch.Size([48, 1, 5, 5])
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if nvae_kernels.dwconv_usable(x, self):
            return nvae_kernels.depthwise_conv2d(x, self.weight)
        return super().forward(x)


class BatchNormSiLU(nn.BatchNorm2d):
    """``silu(batch_norm(x))``: an ``nn.BatchNorm2d`` (same parameters, buffers, ``state_dict``)
    whose forward also applies SiLU; in training on the fused CPU kernel of
    :mod:`acdctool.models.nvae_kernels` where it applies
    (:func:`~acdctool.models.nvae_kernels.bn_silu_usable`), else batch norm then ``F.silu``.

    Example:
        >>> bn = BatchNormSiLU(8)
        >>> x = torch.randn(2, 8, 4, 4)
        >>> bool(torch.allclose(bn(x), F.silu(F.batch_norm(x, None, None, bn.weight, bn.bias, training=True))))
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if nvae_kernels.bn_silu_usable(x, self):
            return nvae_kernels.bn_silu(x, self)
        return F.silu(super().forward(x))


_MIDDLE = (BatchNormSiLU, nn.Identity, DepthwiseConv, BatchNormSiLU, nn.Identity)
"""The layers of an inverted residual that :func:`_run_body` runs as one kernel (bound here, at
import, so that the layer classes swapped in tests do not change what is recognised)."""


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=momentum)


def _bn_silu(channels: int, momentum: float) -> list[nn.Module]:
    """Batch norm then SiLU as two ``nn.Sequential`` entries (the second an identity: see the module docstring)."""
    return [BatchNormSiLU(channels, momentum=momentum), nn.Identity()]


class SqueezeExcitation(nn.Module):
    """Channel gating: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``.

    Args:
        channels: number of channels ``C`` of the input.
        reduction: hidden width is ``max(C // reduction, 4)``.

    Shapes:
        input and output ``(B, C, H, W)``.

    Example:
        >>> se = SqueezeExcitation(16, reduction=8)
        >>> se(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, _SE_MIN_HIDDEN)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate[:, :, None, None]


class EncoderCell(nn.Module):
    """Bottom-up residual cell: BN–Swish–conv3×3 twice, then squeeze-excitation.

    Args:
        channels: input and output channels ``C``.
        se_reduction: reduction factor of the squeeze-excitation.
        bn_momentum: momentum of every batch norm (PyTorch convention).

    Shapes:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, se_reduction: int = 8, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_bn_silu(channels, bn_momentum),
            Conv3x3(channels, channels, bias=False),
            *_bn_silu(channels, bn_momentum),
            Conv3x3(channels, channels),
            SqueezeExcitation(channels, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.body(x), alpha=RESIDUAL_SCALE)


class DownCell(nn.Module):
    """Bottom-up down-sampling cell: halves H and W, doubles the channels.

    Args:
        channels: input channels ``C`` (output ``2C``).
        se_reduction: reduction factor of the squeeze-excitation.
        bn_momentum: momentum of every batch norm.

    Shapes:
        ``(B, C, H, W) -> (B, 2C, H/2, W/2)``; H and W must be even.
    """

    def __init__(self, channels: int, se_reduction: int = 8, bn_momentum: float = 0.1) -> None:
        super().__init__()
        out = 2 * channels
        self.skip = nn.Conv2d(channels, out, 2, stride=2)
        self.body = nn.Sequential(
            *_bn_silu(channels, bn_momentum),
            nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
            *_bn_silu(out, bn_momentum),
            Conv3x3(out, out),
            SqueezeExcitation(out, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(self.skip(x), self.body(x), alpha=RESIDUAL_SCALE)


def _is_middle(window: list[nn.Module]) -> bool:
    """Whether ``window`` is ``BatchNormSiLU, Identity, DepthwiseConv, BatchNormSiLU, Identity``."""
    if len(window) != len(_MIDDLE):
        return False
    for layer, kind in zip(window, _MIDDLE, strict=True):
        if not isinstance(layer, kind):
            return False
    return True


def _run_body(body: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``body(x)``, with each ``BatchNormSiLU, Identity, DepthwiseConv, BatchNormSiLU, Identity``
    run as one CPU kernel where :func:`~acdctool.models.nvae_kernels.middle_usable` says so
    (the middle of an inverted residual: its first activation is then never stored)."""
    layers = list(body)
    i = 0
    while i < len(layers):
        window = layers[i : i + len(_MIDDLE)]
        if _is_middle(window) and nvae_kernels.middle_usable(x, window[0], window[2], window[3]):  # type: ignore[arg-type]
            x = nvae_kernels.bn_silu_dwconv_bn_silu(x, window[0], window[2], window[3])  # type: ignore[arg-type]
            i += len(_MIDDLE)
        else:
            x = layers[i](x)
            i += 1
    return x


def _inverted_residual(cin: int, cout: int, expansion: int, bn_momentum: float) -> list[nn.Module]:
    hidden = expansion * cin
    return [
        _bn(cin, bn_momentum),
        Conv1x1(cin, hidden, bias=False),
        *_bn_silu(hidden, bn_momentum),
        DepthwiseConv(hidden, 5),
        *_bn_silu(hidden, bn_momentum),
        Conv1x1(hidden, cout, bias=False),
        _bn(cout, bn_momentum),
    ]


class DecoderCell(nn.Module):
    """Top-down residual cell: the paper's inverted residual with a depthwise 5×5 conv.

    Args:
        channels: input and output channels ``C``.
        expansion: width factor ``E`` of the hidden layer (``E·C`` channels).
        se_reduction: reduction factor of the squeeze-excitation.
        bn_momentum: momentum of every batch norm.

    Shapes:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, expansion: int = 6, se_reduction: int = 8, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_inverted_residual(channels, channels, expansion, bn_momentum),
            SqueezeExcitation(channels, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, _run_body(self.body, x), alpha=RESIDUAL_SCALE)


class UpCell(nn.Module):
    """Top-down up-sampling cell: doubles H and W, halves the channels.

    Args:
        channels: input channels ``C`` (output ``C // 2``; ``C`` must be even).
        expansion: width factor of the hidden layer.
        se_reduction: reduction factor of the squeeze-excitation.
        bn_momentum: momentum of every batch norm.

    Shapes:
        ``(B, C, H, W) -> (B, C/2, 2H, 2W)``.
    """

    def __init__(self, channels: int, expansion: int = 6, se_reduction: int = 8, bn_momentum: float = 0.1) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"UpCell needs an even channel count, got {channels}")
        out = channels // 2
        # 1×1 conv before the (linear) nearest up-sampling: same result, a quarter of the work
        self.skip = Conv1x1(channels, out)
        # body ends with 4·out = 2C channels that pixel_shuffle turns into out channels at 2×
        self.body = nn.Sequential(
            *_inverted_residual(channels, 4 * out, expansion, bn_momentum),
            nn.PixelShuffle(2),
            SqueezeExcitation(out, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(self.skip(x), scale_factor=2.0, mode="nearest")
        return torch.add(skip, _run_body(self.body, x), alpha=RESIDUAL_SCALE)
