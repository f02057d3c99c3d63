"""NVAE checkpoints for inference: load, check the input they expect, and make them fast on CPU.

:func:`load_nvae` rebuilds an NVAE from a ``nvae-model`` checkpoint (``weights_only`` load,
model rebuilt from its stored arguments) and checks its input channels (4: one mask; 12: a
3-gram) and image size against what the caller needs. :func:`fuse_for_inference` returns an
eval-only copy whose batch norms are folded into the adjacent convolutions and whose tensors are
channels-last: the same posterior-mean logits (to float rounding), 1.5× faster on CPU
(oneDNN's depthwise convolutions prefer channels-last).

Refine and predict load their NVAEs in :mod:`acdctool.correct.nvae_proposer` (which reads
the training patients with :class:`acdctool.correct.patients.ModelPatients`); this module is
the version without refine's options, used by ``qc``.

Example:
    >>> import torch
    >>> from acdctool.models.nvae import NVAE
    >>> model = NVAE(image_size=32, scales=2, groups_per_scale=(1, 1)).eval()
    >>> fast = fuse_for_inference(model)
    >>> x = torch.zeros(2, 4, 32, 32); x[:, 0] = 1
    >>> with torch.inference_mode():
    ...     bool(torch.allclose(fast.reconstruct(x), model.reconstruct(x), atol=1e-5))
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acdctool.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from acdctool.models.nvae import NVAE

__all__ = ["LoadedNvae", "load_nvae", "fuse_for_inference", "patient_seen"]


@dataclass
class LoadedNvae:
    """An NVAE ready for inference and what its checkpoint says about it.

    Attributes:
        model: the (fused, eval-mode) model on ``device``.
        device: where it runs.
        info: JSON-ready record: ``path``, ``sha256``, ``args``, ``fold``, ``epoch``.
        data: the checkpoint's ``data`` record (``fold``, ``folds``, maybe ``train_patients``).
    """

    model: NVAE
    device: torch.device
    info: dict[str, Any]
    data: dict[str, Any]

    def seen(self, patient: str) -> bool | None:
        """Whether this NVAE trained on ``patient``: True/False, or None when it cannot tell."""
        return patient_seen(self.data, patient)


def patient_seen(data: dict[str, Any], patient: str) -> bool | None:
    """Whether a model whose checkpoint ``data`` record is given trained on ``patient``.

    ``train_patients`` decides when recorded. Otherwise a fold model (``fold`` k with the
    ``folds`` map patient → fold) trained on patients of other folds only, so it saw
    ``patient`` iff the patient is in the map with another fold (a patient absent from the
    map, e.g. of another file, was never seen). Without either record: None (unknown).

    Example:
        >>> patient_seen({"fold": 0, "folds": {"p1": 0, "p2": 1}}, "p1")
        False
        >>> patient_seen({"fold": 0, "folds": {"p1": 0, "p2": 1}}, "p2")
        True
        >>> patient_seen({"train_patients": ["p1"]}, "p1"), patient_seen({}, "p1")
        (True, None)
    """
    if data.get("train_patients") is not None:
        return patient in set(data["train_patients"])
    fold, folds = data.get("fold"), data.get("folds")
    if fold is None or not folds:
        return None
    return patient in folds and int(folds[patient]) != int(fold)


def load_nvae(
    path: Path | str, *, in_channels: int, image_size: int | None = None, device: str = "auto", fuse: bool = True
) -> LoadedNvae:
    """Load an NVAE checkpoint for inference.

    Args:
        path: a train-nvae checkpoint (``best.pt``).
        in_channels: channels the caller feeds (4: one mask; 12: a 3-gram).
        image_size: side of the slices (px) it will see; None: not checked.
        device: ``auto``, ``cpu`` or ``cuda``.
        fuse: return :func:`fuse_for_inference`'s copy (same output, faster).

    Raises:
        InputMissingError: no such file. FileKindError: not an NVAE checkpoint.
        BadInputError: it takes another input (a 3-gram NVAE where one mask is given, or the
            reverse), or was made for another image size.
    """
    from acdctool.conventions import resolve_device
    from acdctool.io.checkpoint import file_sha256, load_checkpoint
    from acdctool.models.nvae import NVAE

    ckpt = load_checkpoint(path, kinds=("nvae-model",))
    args = ckpt.model_args
    have = int(args.get("in_channels", -1))
    if have != in_channels:
        kind = {4: "a single-mask", 12: "a 3-gram"}.get(have, "an")
        raise BadInputError(
            f"{path}: {kind} NVAE ({have} input channels) but {in_channels} are needed here "
            f"({'one mask per slice' if in_channels == 4 else 'previous/current/next masks'}); "
            "use a checkpoint of train-nvae with the matching --context"
        )
    size = int(args.get("image_size", -1))
    if image_size is not None and size != image_size:
        raise BadInputError(f"{path}: NVAE made for {size}×{size} slices, the input has {image_size}×{image_size}")
    dev = resolve_device(device)
    try:
        model = NVAE.from_args(args)
        model.load_state_dict(ckpt.state_dict)
    except (RuntimeError, TypeError, ValueError, KeyError, ConfigError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputError(f"{path}: weights do not fit the NVAE its arguments describe ({first})") from None
    model.eval()
    if fuse:
        model = fuse_for_inference(model)
    model.to(dev)
    info = {
        "path": str(Path(path).resolve()),
        "sha256": file_sha256(path),
        "args": args,
        "fold": ckpt.data.get("fold"),
        "epoch": (ckpt.train or {}).get("epoch"),
    }
    return LoadedNvae(model, dev, info, dict(ckpt.data))


def fuse_for_inference(model: NVAE) -> NVAE:
    """An eval-only copy of ``model`` with batch norms folded into convolutions, channels-last.

    In every ``nn.Sequential`` of the model, ``conv → BN`` becomes one convolution, and so does
    ``BN → conv1×1`` (no padding, so folding is exact); SiLUs after the first layer run in
    place. The copy gives the same outputs as ``model.eval()`` up to float rounding, and must
    not be trained (its batch norms are gone). Inputs may be in either memory format.
    """
    from torch import nn

    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Sequential):
                setattr(module, name, _fold_sequence(child))
    import torch

    return fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _unfuse_bn_silu(mods: list[nn.Module]) -> list[nn.Module]:
    """Each training-time :class:`~acdctool.models.nvae_cells.BatchNormSiLU` as the plain
    ``nn.BatchNorm2d`` then ``nn.SiLU`` (in place of the identity that follows it), so that
    folding a convolution into the batch norm keeps the SiLU after it."""
    from torch import nn

    from acdctool.models.nvae_cells import BatchNormSiLU

    out: list[nn.Module] = []
    for j, m in enumerate(mods):
        if isinstance(m, nn.Identity) and j > 0 and isinstance(mods[j - 1], BatchNormSiLU):
            continue  # the SiLU now follows the plain batch norm
        if isinstance(m, BatchNormSiLU):
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            bn.load_state_dict(m.state_dict())
            out += [bn.to(m.weight.device).eval(), nn.SiLU()]
        else:
            out.append(m)
    return out


def _fold_sequence(seq: nn.Sequential) -> nn.Sequential:
    from torch import nn

    mods = _unfuse_bn_silu(list(seq))
    i = 0
    while i < len(mods) - 1:
        a, b = mods[i], mods[i + 1]
        if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
            mods[i : i + 2] = [_fold_after(a, b)]
        elif isinstance(a, nn.BatchNorm2d) and a.track_running_stats and _is_pointwise(b):
            mods[i : i + 2] = [_fold_before(a, b)]  # type: ignore[arg-type]
        else:
            i += 1
    # In place is safe after the first layer: the input (a skip connection) is never touched.
    mods = [nn.SiLU(inplace=True) if isinstance(m, nn.SiLU) and j > 0 else m for j, m in enumerate(mods)]
    return nn.Sequential(*mods)


def _is_pointwise(m: nn.Module) -> bool:
    from torch import nn

    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.padding == (0, 0)
        and m.stride == (1, 1)
        and m.groups == 1
    )


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BN in eval mode as ``y = s·x + t`` per channel."""
    import torch

    assert bn.running_var is not None and bn.running_mean is not None
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    s = weight / torch.sqrt(bn.running_var + bn.eps)
    return s, bias - bn.running_mean * s


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    from torch import nn

    from acdctool.models.nvae_cells import Conv1x1

    out: nn.Conv2d
    if isinstance(conv, Conv1x1):  # keeps its matrix-product path on channels-last CPU input
        out = Conv1x1(conv.in_channels, conv.out_channels, bias=True)
    else:
        out = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=True,
        )
    out.weight.data.copy_(weight)
    assert out.bias is not None
    out.bias.data.copy_(bias)
    return out


def _fold_after(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one convolution."""
    import torch

    s, t = _bn_affine(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return _conv_like(conv, conv.weight * s.reshape(-1, 1, 1, 1), bias * s + t)


def _fold_before(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv(bn(x))`` as one convolution (``conv`` pointwise, so the border needs no care)."""
    import torch

    s, t = _bn_affine(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    w = conv.weight
    return _conv_like(conv, w * s.reshape(1, -1, 1, 1), bias + (w[:, :, 0, 0] * t[None]).sum(1))
