"""CPU kernels for the NVAE training step, as custom ops that ``torch.compile`` keeps whole.

Why: on a CPU, two parts of a channels_last NVAE step were far slower than their arithmetic
(batch 8, the report's model, one thread):

- the decoder cells' depthwise 5×5 convolutions ``(8, 48, 64, 64)``, ``(8, 96, 32, 32)``,
  ``(8, 192, 16, 16)``: oneDNN's backward pass took 4–20 ms per call for 10–80 M
  multiply-adds, about a sixth of the step;
- batch norm followed by SiLU (every cell has two): inductor's fused loops read and write each
  activation about 17 times over forward and backward, 8 ms for one ``(8, 48, 64, 64)``
  tensor, about a third of the compiled step.
- each latent group's soft clamps, draw and KL (``(8, 20, 64², 32², 16²)`` latents): inductor's
  loops recompute every ``tanh`` in several kernels and run 20 channels as 16 + a masked 4,
  about a tenth of the compiled step.

What (``nvae_kernels.cpp``; float32, NHWC, vectorised, threaded with torch's thread pool):

- ``acdctool::dwconv2d(x, weight)``: exactly ``F.conv2d(x, weight, padding=K//2, groups=C)``
  for a ``(C, 1, K, K)`` weight, K 3 or 5, stride 1, no bias; its backward
  ``acdctool::dwconv2d_backward`` gives both gradients (grad-weight in one pass over the
  batch). 2.5–4× faster than oneDNN forward plus backward.
- ``acdctool::bn_silu(x, weight, bias, eps)``: ``silu(batch_norm(x))`` in training mode (batch
  statistics; returns the output, the batch mean, ``1/sqrt(var + eps)`` and the biased
  variance, so the caller updates the running statistics); ``acdctool::bn_silu_backward``
  recomputes the activation from ``x`` rather than storing it. Two passes over the data each
  way instead of about eight.
- ``acdctool::bn_silu_dwconv_bn_silu(x, gamma_a, beta_a, weight, gamma_b, beta_b, eps_a,
  eps_b)``: the middle of every decoder cell, ``silu(bn_b(dwconv(silu(bn_a(x)))))`` with both
  batch norms in training mode, for a multiple of 16 channels (the hidden widths 48, 96, 192).
  Its first activation is never stored: bands of rows of one sample are activated into a buffer
  that stays in the core's cache and convolved from there, and the convolution's output rows
  give ``bn_b``'s statistics as they are written; the backward
  (``acdctool::bn_silu_dwconv_bn_silu_backward``) works band by band the same way. 14 passes
  over the ``(B, H, W, C)`` data forward and backward instead of 22 with the three ops above:
  on this 2-core CPU the step is memory-bound there (the hidden tensors, up to 6 MB, leave the
  core's cache between layers).
- ``acdctool::conv3x3(x, weight, bias)``: ``F.conv2d(x, weight, bias, padding=1)`` for 4 or 8
  output channels and a multiple of them in (the 4-channel cells at 128², the 8-channel ones at
  64², the 3-gram stem 12 → 4), where oneDNN's channels_last paths run 2–4× below the
  arithmetic; ``acdctool::conv3x3_backward`` gives the gradients asked for. On rows of a
  multiple of 16 pixels (the model's) a group of 16/C input channels is one broadcast load and
  one fused multiply-add (1.2–3× faster than the permute kernel used for other widths). The
  same ops take 16 to 48 output channels and a multiple of 8 in (the latent groups' prior and
  posterior heads, 8/16/32 → 40 channels, and the encoder cells at 32² and 16²) on
  register-blocked kernels: the heads' forward, every grad weight and the grad input into 8
  channels (the 64² head) 10–40% faster than oneDNN's (its other grad inputs and 16-channel
  forward, as fast as ours, are kept).
- ``acdctool::latent_sample_kl(prior, post, eps)``: from the raw ``(B, 2Z, h, w)`` outputs of a
  group's prior head (None for the top group's ``N(0, I)``) and posterior head, and the noise
  ``eps``, the draw ``z`` and the per-sample KL ``(B,)`` of
  :class:`~acdctool.models.nvae_dist.ResidualNormal` (each ``tanh`` once, the KL summed in
  double); ``acdctool::latent_sample_kl_backward`` gives the gradients of both heads' outputs.

The forward convolution adds the taps in oneDNN's order; every other result differs from
torch's by float rounding only (the statistics are accumulated in double; relative 1e-5 of
the largest element at most, see ``tests/models/test_nvae_kernels.py``). Every op has its
shape (fake) and autograd rules registered, so ``torch.compile`` calls it as an opaque kernel.

How it is used: :func:`load` compiles the source once per machine type (a C++ compiler and
ninja needed; half a minute to two minutes) with torch's ``cpp_extension`` into
``$XDG_CACHE_HOME/acdctool/kernels/nvae-<hash>`` (default ``~/.cache``; the hash covers the
source, torch, Python and the CPU's vector capability), and loads it into the process; later
processes load the cached library without compiling. Nothing builds on import: the trainer
calls :func:`load` when a compiled CPU training step starts. The layers of
:mod:`acdctool.models.nvae_cells` (:class:`~acdctool.models.nvae_cells.DepthwiseConv`,
:class:`~acdctool.models.nvae_cells.Conv3x3`, :class:`~acdctool.models.nvae_cells.BatchNormSiLU`,
and the decoder cells' middle) then call the kernels where :func:`dwconv_usable`,
:func:`conv3x3_usable`, :func:`bn_silu_usable` and :func:`middle_usable` say so (CPU,
float32, no autocast, channels_last input, training mode for batch norm) and torch's own ops
everywhere else (CUDA, bf16, NCHW, batch norm in evaluation, before or without a successful
:func:`load`); so does
:class:`~acdctool.models.nvae.NVAE`'s training draw (:func:`latent_usable`). A failed build (no
compiler, no ninja, a read-only cache) is returned by :func:`load` as one line, never raised.
The loaded library is process-wide state, by nature of native code.

Example:
    >>> import torch.nn.functional as F
    >>> error = load()  # None once built (half a minute to two the first time)
    >>> x, w = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last), torch.randn(16, 1, 5, 5)
    >>> ref = F.conv2d(x, w, padding=2, groups=16)
    >>> error is not None or bool(torch.allclose(depthwise_conv2d(x, w), ref, atol=1e-5))
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "SOURCE",
    "KERNEL_SIZES",
    "load",
    "available",
    "cache_dir",
    "dwconv_usable",
    "depthwise_conv2d",
    "bn_silu_usable",
    "bn_silu",
    "middle_usable",
    "bn_silu_dwconv_bn_silu",
    "latent_usable",
    "latent_sample_kl",
    "CONV3X3_CHANNELS",
    "CONV3X3_WIDE",
    "conv3x3_usable",
    "conv3x3",
]

SOURCE = Path(__file__).with_name("nvae_kernels.cpp")
KERNEL_SIZES = (3, 5)
"""Kernel sides of the depthwise convolution kernel."""
CONV3X3_CHANNELS = (4, 8)
"""Output channels of the 3×3 convolution kernel (input channels: a multiple of them)."""
CONV3X3_WIDE = (16, 24, 32, 40, 48)
"""Output channels of the 3×3 convolution's wide kernels (input channels: a multiple of 8)."""

# Vector instructions per torch's own CPU capability (not -march=native): a build cached in a
# home folder shared across machines must not hold instructions another machine lacks.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mavx2"],
    "AVX2": ["-mavx2", "-mfma"],
}


class _State:
    tried = False
    ready = False
    error: str | None = None


_STATE = _State()


def _capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - older torch or an unknown CPU: build portable code
        return "DEFAULT"


def cache_dir() -> Path:
    """Where the kernels are built: one folder per source, torch version, Python and CPU capability."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "acdctool" / "kernels"
    key = "|".join(
        (SOURCE.read_text(), torch.__version__, platform.python_version(), platform.machine(), _capability())
    )
    return root / f"nvae-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _library_name(folder: Path) -> str:
    return f"acdctool_{folder.name.replace('-', '_')}"


def _build() -> None:
    """Load the cached build of ``nvae_kernels.cpp``, compiling it first if there is none, and
    register the ops' Python rules."""
    folder = cache_dir()
    library = folder / f"{_library_name(folder)}.so"
    if library.is_file():  # a published folder is complete (see _compile): no compiler, no ninja
        torch.ops.load_library(str(library))
    else:
        _compile(folder)
    _register()


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """Let ``cpp_extension`` find the ``ninja`` of the ``ninja`` Python package (a dependency)
    when no ``ninja`` is on ``PATH``, as when a virtual environment's script runs unactivated."""
    bin_dir = None
    if shutil.which("ninja") is None:
        try:
            bin_dir = getattr(importlib.import_module("ninja"), "BIN_DIR", None)
        except ImportError:
            pass
    if not bin_dir:
        yield
        return
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = str(bin_dir) + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _compile(folder: Path) -> None:
    """Compile and load the library in a folder of this process's own, then publish that folder
    as ``folder`` with one ``os.replace``.

    Why not build in ``folder`` itself: ``cpp_extension`` guards a build folder with a lock file
    that a killed build leaves behind, and every later process then waits on it forever.
    Processes that build at once (DDP ranks, parallel runs) each build privately; the first to
    publish wins, the others keep the library they loaded (the same source and flags).
    """
    from torch.utils.cpp_extension import load as load_extension

    folder.parent.mkdir(parents=True, exist_ok=True)
    private = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(private, ignore_errors=True)  # a previous process with the same id died here
    private.mkdir()
    try:
        with _ninja_on_path():
            load_extension(
                name=_library_name(folder),
                sources=[str(SOURCE)],
                extra_cflags=["-O3", *_ISA_FLAGS.get(_capability(), [])],
                build_directory=str(private),
                is_python_module=False,
                verbose=False,
            )
        if folder.is_dir() and not (folder / f"{_library_name(folder)}.so").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # an unfinished folder of an older layout
        try:
            os.replace(private, folder)
        except OSError:
            pass  # another process published first; the library loaded from here stays mapped
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _register() -> None:
    """Shape and autograd rules of the ops (the library defines their CPU kernels)."""
    cl = torch.channels_last

    @torch.library.register_fake("acdctool::dwconv2d")
    def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x, memory_format=cl)

    @torch.library.register_fake("acdctool::dwconv2d_backward")
    def _(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty_like(x, memory_format=cl), torch.empty_like(weight)

    def dw_setup(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    def dw_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        return torch.ops.acdctool.dwconv2d_backward(grad, x, weight)

    torch.library.register_autograd("acdctool::dwconv2d", dw_backward, setup_context=dw_setup)

    @torch.library.register_fake("acdctool::bn_silu")
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
        stats = [x.new_empty(x.shape[1]) for _ in range(3)]
        return (torch.empty_like(x, memory_format=cl), *stats)

    @torch.library.register_fake("acdctool::bn_silu_backward")
    def _(
        grad: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        invstd: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.empty_like(x, memory_format=cl), torch.empty_like(weight), torch.empty_like(bias)

    def bn_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        x, weight, bias, _ = inputs
        _, mean, invstd, _ = output
        ctx.save_for_backward(x, weight, bias, mean, invstd)

    def bn_backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        x, weight, bias, mean, invstd = ctx.saved_tensors
        dx, dw, db = torch.ops.acdctool.bn_silu_backward(grad, x, weight, bias, mean, invstd)
        return dx, dw, db, None

    torch.library.register_autograd("acdctool::bn_silu", bn_backward, setup_context=bn_setup)

    @torch.library.register_fake("acdctool::bn_silu_dwconv_bn_silu")
    def _(x: torch.Tensor, *params: Any) -> tuple[torch.Tensor, ...]:
        stats = [x.new_empty(x.shape[1]) for _ in range(6)]
        return (torch.empty_like(x, memory_format=cl), torch.empty_like(x, memory_format=cl), *stats)

    @torch.library.register_fake("acdctool::bn_silu_dwconv_bn_silu_backward")
    def _(grad: torch.Tensor, x: torch.Tensor, h: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gamma_a, beta_a, weight, gamma_b, beta_b = params[:5]
        like = (gamma_a, beta_a, weight, gamma_b, beta_b)
        return (torch.empty_like(x, memory_format=cl), *(torch.empty_like(t) for t in like))

    def middle_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        x, gamma_a, beta_a, weight, gamma_b, beta_b, _, _ = inputs
        _, h, mean_a, invstd_a, _, mean_b, invstd_b, _ = output
        ctx.save_for_backward(x, h, gamma_a, beta_a, weight, gamma_b, beta_b, mean_a, invstd_a, mean_b, invstd_b)

    def middle_backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        grads = torch.ops.acdctool.bn_silu_dwconv_bn_silu_backward(grad, *ctx.saved_tensors)
        return (*grads, None, None)

    torch.library.register_autograd("acdctool::bn_silu_dwconv_bn_silu", middle_backward, setup_context=middle_setup)

    @torch.library.register_fake("acdctool::conv3x3")
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3])).contiguous(memory_format=cl)

    @torch.library.register_fake("acdctool::conv3x3_backward")
    def _(
        grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, output_mask: list[bool]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        empty = x.new_empty(0)
        return (
            torch.empty_like(x, memory_format=cl) if output_mask[0] else empty,
            torch.empty_like(weight) if output_mask[1] else empty,
            x.new_empty(weight.shape[0]) if output_mask[2] else empty,
        )

    def conv_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias = inputs
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)

    def conv_backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.acdctool.conv3x3_backward(grad, x, weight, mask)
        return (gx if mask[0] else None), (gw if mask[1] else None), (gb if mask[2] else None)

    torch.library.register_autograd("acdctool::conv3x3", conv_backward, setup_context=conv_setup)

    @torch.library.register_fake("acdctool::latent_sample_kl")
    def _(prior: torch.Tensor | None, post: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty_like(eps, memory_format=cl), eps.new_empty(eps.shape[0])

    @torch.library.register_fake("acdctool::latent_sample_kl_backward")
    def _(
        grad_z: torch.Tensor, grad_kl: torch.Tensor, prior: torch.Tensor | None, post: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grad_prior = torch.empty_like(post, memory_format=cl) if prior is not None else post.new_empty(0)
        return grad_prior, torch.empty_like(post, memory_format=cl)

    def latent_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        prior, post, eps = inputs
        ctx.has_prior = prior is not None
        ctx.save_for_backward(prior if prior is not None else post.new_empty(0), post, eps)

    def latent_backward(ctx: Any, grad_z: torch.Tensor | None, grad_kl: torch.Tensor | None) -> tuple[Any, ...]:
        prior, post, eps = ctx.saved_tensors
        grad_z = torch.zeros_like(eps) if grad_z is None else grad_z
        grad_kl = eps.new_zeros(eps.shape[0]) if grad_kl is None else grad_kl
        prior_arg = prior if ctx.has_prior else None
        grad_prior, grad_post = torch.ops.acdctool.latent_sample_kl_backward(grad_z, grad_kl, prior_arg, post, eps)
        return (grad_prior if ctx.has_prior else None), grad_post, None

    torch.library.register_autograd("acdctool::latent_sample_kl", latent_backward, setup_context=latent_setup)


def load() -> str | None:
    """Build (first call on a machine: half a minute to two) and load the kernels, once per process.

    Returns:
        ``None`` when the kernels are ready, else one line saying why not (the caller reports
        it; the layers then stay on torch's ops). Later calls return the same answer.
    """
    state = _STATE
    if not state.tried:
        state.tried = True
        try:
            _build()
            state.ready = True
        except Exception as exc:  # noqa: BLE001 - any build or load failure leaves torch's ops in place
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            state.error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return state.error


def available() -> bool:
    """True once :func:`load` has succeeded in this process."""
    return _STATE.ready


def _fast_input(x: torch.Tensor) -> bool:
    # under autocast (``--precision bf16``) torch's ops keep their autocast behaviour
    return (
        _STATE.ready
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def dwconv_usable(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv(x)`` may run on the kernel: loaded, CPU, float32, channels_last, and a
    depthwise K×K convolution (K 3 or 5) with stride 1, padding K//2, dilation 1 and no bias."""
    k = conv.kernel_size[0]
    return (
        _fast_input(x)
        and conv.weight.dtype == torch.float32
        and conv.bias is None
        and conv.groups == conv.in_channels == conv.out_channels
        and k in KERNEL_SIZES
        and tuple(conv.kernel_size) == (k, k)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding == (k // 2, k // 2)
        and conv.padding_mode == "zeros"
    )


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=K // 2, groups=C)`` on the kernel (needs :func:`load`).

    Shapes:
        ``x (B, C, H, W)`` float32 CPU (any memory format; channels_last avoids a copy),
        ``weight (C, 1, K, K)``; returns ``(B, C, H, W)`` in channels_last memory.
    """
    return torch.ops.acdctool.dwconv2d(x, weight)


def bn_silu_usable(x: torch.Tensor, bn: nn.BatchNorm2d) -> bool:
    """Whether ``silu(bn(x))`` may run on the kernel: loaded, CPU, float32, channels_last, and a
    training-mode affine batch norm that uses batch statistics (momentum a number, not None)."""
    return (
        _fast_input(x)
        and bn.training
        and bn.affine
        and bn.weight.dtype == torch.float32
        and (bn.momentum is not None or not bn.track_running_stats)
        and x.numel() > x.shape[1]  # more than one value per channel, as batch norm requires
    )


def bn_silu(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``silu(bn(x))`` in training mode on the kernel, updating ``bn``'s running statistics as
    ``nn.BatchNorm2d`` does (needs :func:`load`; check :func:`bn_silu_usable` first).

    Shapes:
        ``x (B, C, H, W)``; returns ``(B, C, H, W)`` in channels_last memory.
    """
    out, mean, _, var = torch.ops.acdctool.bn_silu(x, bn.weight, bn.bias, bn.eps)
    _update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return out


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """What ``nn.BatchNorm2d`` does to its running statistics in training, from the batch mean
    and biased variance of ``n`` values per channel."""
    if bn.track_running_stats:
        assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
        m = float(bn.momentum)  # type: ignore[arg-type]  # checked by bn_silu_usable
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            bn.running_mean.copy_(m * mean + (1 - m) * bn.running_mean)
            bn.running_var.copy_(m * var * (n / (n - 1)) + (1 - m) * bn.running_var)


def middle_usable(x: torch.Tensor, bn_a: nn.BatchNorm2d, conv: nn.Conv2d, bn_b: nn.BatchNorm2d) -> bool:
    """Whether ``silu(bn_b(conv(silu(bn_a(x)))))`` may run as one kernel: each part usable on
    its own (:func:`bn_silu_usable`, :func:`dwconv_usable`) and a multiple of 16 channels."""
    return bn_silu_usable(x, bn_a) and dwconv_usable(x, conv) and bn_silu_usable(x, bn_b) and x.shape[1] % 16 == 0


def bn_silu_dwconv_bn_silu(
    x: torch.Tensor, bn_a: nn.BatchNorm2d, conv: nn.Conv2d, bn_b: nn.BatchNorm2d
) -> torch.Tensor:
    """``silu(bn_b(conv(silu(bn_a(x)))))`` for a depthwise ``conv`` and two training-mode batch
    norms (the middle of a decoder cell) on one kernel that never stores the first activation,
    updating both batch norms' running statistics as ``nn.BatchNorm2d`` does (needs
    :func:`load`; check :func:`middle_usable` first).

    Shapes:
        ``x (B, C, H, W)`` with ``C`` a multiple of 16; returns ``(B, C, H, W)`` channels_last.
    """
    out, _, mean_a, _, var_a, mean_b, _, var_b = torch.ops.acdctool.bn_silu_dwconv_bn_silu(
        x, bn_a.weight, bn_a.bias, conv.weight, bn_b.weight, bn_b.bias, bn_a.eps, bn_b.eps
    )
    n = x.numel() // x.shape[1]
    _update_running_stats(bn_a, mean_a, var_a, n)
    _update_running_stats(bn_b, mean_b, var_b, n)
    return out


def latent_usable(post: torch.Tensor, prior: torch.Tensor | None) -> bool:
    """Whether a latent group's sampling and KL may run on the kernel: loaded, CPU, float32,
    channels_last raw head outputs ``(B, 2Z, h, w)`` (the prior's, if any, shaped alike)."""
    return (
        _fast_input(post)
        and post.shape[1] % 2 == 0
        and (prior is None or (_fast_input(prior) and prior.shape == post.shape))
    )


def latent_sample_kl(
    prior: torch.Tensor | None, post: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One latent group's reparameterised draw and KL on the kernel (needs :func:`load`):
    what :meth:`Normal.from_params(prior).residual(post) <acdctool.models.nvae_dist.Normal.residual>`
    gives with ``sample`` and ``kl(prior).sum((1, 2, 3))``, for the noise ``eps``.

    Shapes:
        ``prior``, ``post`` ``(B, 2Z, h, w)`` raw head outputs (location channels first;
        ``prior`` None for the standard normal), ``eps`` ``(B, Z, h, w)``; returns ``z``
        ``(B, Z, h, w)`` channels_last and the KL ``(B,)`` in nats.
    """
    z, kl = torch.ops.acdctool.latent_sample_kl(prior, post, eps)
    return z, kl


def conv3x3_usable(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv(x)`` may run on the 3×3 kernel: loaded, CPU, float32, channels_last, and a
    3×3 convolution with stride 1, padding 1, dilation 1, one group, and either ``C`` output
    channels for ``C`` in :data:`CONV3X3_CHANNELS` and a multiple of ``C`` input channels, on an
    input whose width times ``C`` is a multiple of 16, or ``C`` in :data:`CONV3X3_WIDE` and a
    multiple of 8 input channels, on an input whose width is a multiple of 16."""
    c = conv.out_channels
    width = x.shape[3] if x.dim() == 4 else 0
    narrow = c in CONV3X3_CHANNELS and conv.in_channels % c == 0 and width * c % 16 == 0
    wide = c in CONV3X3_WIDE and conv.in_channels % 8 == 0 and width % 16 == 0
    return (
        _fast_input(x)
        and conv.weight.dtype == torch.float32
        and (narrow or wide)
        and conv.groups == 1
        and tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding == (1, 1)
        and conv.padding_mode == "zeros"
        and x.shape[1] == conv.in_channels
    )


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` on the kernel (needs :func:`load`; check
    :func:`conv3x3_usable` first).

    Shapes:
        ``x (B, M·C, H, W)`` float32 CPU with ``C`` 4 or 8 and ``W·C`` a multiple of 16, or
        ``x (B, 8·M, H, W)`` with ``C`` in :data:`CONV3X3_WIDE` and ``W`` a multiple of 16;
        ``weight (C, M·C, 3, 3)`` (``(C, 8·M, 3, 3)``), ``bias (C,)`` or None; returns
        ``(B, C, H, W)`` channels_last.
    """
    return torch.ops.acdctool.conv3x3(x, weight, bias)
