"""Factory over MONAI 2D segmentation networks: a name and its constructor arguments.

A segmentation checkpoint stores ``(arch, args)`` and the weights, never pickled code, so a
model is always rebuilt with :func:`build_seg_model` and the stored arguments (SPEC §6:
``torch.load(weights_only=True)``).

============  ===========================================  ==============================
name          MONAI class                                  default arguments (128² input)
============  ===========================================  ==============================
unet          ``UNet``                                     channels 16..256, strides 2×4
resunet       ``UNet`` with ``num_res_units=2``            as unet, 2 residual units/level
attunet       ``AttentionUnet``                            channels 16..256, strides 2×4
swinunetr     ``SwinUNETR`` (``spatial_dims=2``)           feature_size 24
============  ===========================================  ==============================

Every net maps ``(B, in_channels, H, W)`` float32 to ``(B, out_channels, H, W)`` logits. H and
W must be multiples of :func:`size_divisor` (16 for the 5-level U-Nets, 32 for Swin UNETR,
whose bottleneck also needs at least 2×2 pixels in training, so H, W ≥ 64).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from acdctool.config import Arch, choices
from acdctool.errors import BadInputError, ConfigError

ARCHS: tuple[str, ...] = choices(Arch)
"""Architectures known to :func:`build_seg_model`, in the order the report lists them."""

_UNET = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 0}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": dict(_UNET),
    "resunet": dict(_UNET, num_res_units=2),
    "attunet": {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)},
    "swinunetr": {"feature_size": 24, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)},
}
# Constructor arguments a user may override, per architecture (anything else is a typo).
_ALLOWED: dict[str, set[str]] = {
    "unet": {"channels", "strides", "num_res_units", "kernel_size", "up_kernel_size", "dropout", "norm", "act"},
    "attunet": {"channels", "strides", "kernel_size", "up_kernel_size", "dropout"},
    "swinunetr": {
        "feature_size",
        "depths",
        "num_heads",
        "window_size",
        "drop_rate",
        "attn_drop_rate",
        "dropout_path_rate",
        "norm_name",
        "use_v2",
    },
}
_ALLOWED["resunet"] = _ALLOWED["unet"]


def default_args(arch: str, in_channels: int = 1, out_channels: int = 4) -> dict[str, Any]:
    """The full constructor arguments of ``arch`` with the tool's defaults.

    Raises:
        ConfigError: unknown ``arch``.
    """
    _check_arch(arch)
    return {"spatial_dims": 2, "in_channels": in_channels, "out_channels": out_channels, **_DEFAULTS[arch]}


def resolve_args(
    arch: str, overrides: Mapping[str, Any] | None = None, in_channels: int = 1, out_channels: int = 4
) -> dict[str, Any]:
    """Defaults of ``arch`` updated with ``overrides``, checked before anything is built.

    Giving U-Net ``channels`` without ``strides`` uses stride 2 between every level.

    Raises:
        ConfigError: unknown arch, unknown argument name, or inconsistent lengths.

    Example:
        >>> resolve_args("unet", {"channels": (4, 8, 16)})["strides"]
        (2, 2)
    """
    args = default_args(arch, in_channels, out_channels)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - _ALLOWED[arch])
    if unknown:
        raise ConfigError(
            f"--net-arg {', '.join(unknown)}: not an argument of {arch} (allowed: {', '.join(sorted(_ALLOWED[arch]))})"
        )
    args.update({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    if arch != "swinunetr":
        if "channels" in overrides and "strides" not in overrides:
            args["strides"] = (2,) * (len(args["channels"]) - 1)
        if len(args["strides"]) != len(args["channels"]) - 1:
            raise ConfigError(
                f"{arch}: needs len(strides) == len(channels) - 1, got "
                f"{len(args['strides'])} strides for {len(args['channels'])} channels"
            )
    else:
        if args["feature_size"] % 12:
            raise ConfigError(f"swinunetr: feature_size must be a multiple of 12, got {args['feature_size']}")
        if len(args["depths"]) != len(args["num_heads"]):
            raise ConfigError("swinunetr: depths and num_heads need the same length")
    return args


def size_divisor(arch: str, args: Mapping[str, Any]) -> int:
    """Input H and W must be multiples of this (px)."""
    if arch == "swinunetr":
        return 32  # patch embedding /2, then 4 patch-merging stages /2 each
    return int(math.prod(int(s) for s in args["strides"]))


def min_size(arch: str, args: Mapping[str, Any]) -> int:
    """Smallest H, W (px) a net can train on (instance norm needs > 1 pixel at the bottom)."""
    return 64 if arch == "swinunetr" else size_divisor(arch, args)


def check_input_size(arch: str, args: Mapping[str, Any], shape: tuple[int, int], source: str = "input") -> None:
    """Raise :class:`BadInputError` when ``shape`` (H, W) does not fit the net."""
    div, low = size_divisor(arch, args), min_size(arch, args)
    if any(s % div or s < low for s in shape):
        raise BadInputError(
            f"{source}: slices are {shape[0]}×{shape[1]} px; {arch} needs multiples of {div} "
            f"and at least {low} px (re-run prep with another --size)"
        )


def check_buildable(arch: str, args: Mapping[str, Any], shape: tuple[int, int]) -> None:
    """Build the net and run one zero slice of ``shape`` (H, W) through it, on the CPU.

    ``--net-arg`` values of the wrong type or range (``channels=abc``, ``dropout=2``,
    ``kernel_size=2``) fail here as a usage error instead of deep inside training.

    Raises:
        ConfigError: naming the arguments and what the net said.
    """
    import torch

    try:
        net = build_seg_model(arch, args)
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(1, int(args.get("in_channels", 1)), *shape))
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError, IndexError, ZeroDivisionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--net-arg: {arch} cannot be built or run with these arguments ({first})") from None
    if tuple(out.shape[-2:]) != tuple(shape):
        raise ConfigError(f"--net-arg: {arch} maps {shape[0]}×{shape[1]} slices to {tuple(out.shape[-2:])}")


def build_seg_model(arch: str, args: Mapping[str, Any]):
    """Build a MONAI segmentation net from its name and full constructor arguments.

    Args:
        arch: one of :data:`ARCHS`.
        args: as returned by :func:`resolve_args` (or stored in a checkpoint).

    Returns:
        ``torch.nn.Module`` mapping (B, in_channels, H, W) to (B, out_channels, H, W) logits.

    Raises:
        ConfigError: unknown ``arch``.

    Example:
        >>> net = build_seg_model("unet", resolve_args("unet", {"channels": (4, 8, 16)}))  # doctest: +SKIP
        >>> net(torch.zeros(2, 1, 64, 64)).shape  # doctest: +SKIP
        torch.Size([2, 4, 64, 64])
    """
    _check_arch(arch)
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    # Imported here: MONAI takes ~2 s to import and the CLI must start fast.
    if arch in ("unet", "resunet"):
        from monai.networks.nets import UNet

        return UNet(**args)
    if arch == "attunet":
        from monai.networks.nets import AttentionUnet

        return AttentionUnet(**args)
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(**args)


def parse_net_args(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings (``--net-arg``) into constructor overrides.

    VALUE is JSON when it parses (``0.1``, ``true``, ``[4, 8]``), else a comma list of numbers
    (``4,8,16`` → ``(4, 8, 16)``), else a plain string (``batch``).

    Raises:
        ConfigError: an item without ``=``.

    Example:
        >>> parse_net_args(["channels=4,8,16", "dropout=0.1"])
        {'channels': (4, 8, 16), 'dropout': 0.1}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--net-arg {item!r}: expected KEY=VALUE, e.g. channels=16,32,64")
        out[key.strip()] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    if "," in raw:
        try:
            return tuple(_number(p) for p in raw.split(","))
        except ValueError:
            pass
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return tuple(value) if isinstance(value, list) else value


def _number(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHS)})")
