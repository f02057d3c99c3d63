"""The NVAE's CPU kernels (depthwise convolution, 3×3 convolution, batch norm + SiLU, the
decoder cells' fused middle, a latent group's sample and KL) and the 1×1-as-linear layer against
torch's own ops.

Tolerance (fp32): outputs and every gradient agree with the reference to 1e-5 of the reference's
largest element. For the convolution the reference is ``F.conv2d`` in float32 (the kernel adds
the same products in another order; observed 1e-7–1e-5); for batch norm it is torch's batch
norm in float64, since the kernel (double accumulators) is closer to it than torch's float32
path is (observed 1e-7–1e-6 against 1e-6–2e-5 for torch float32 on data with mean 5, std 3).
For the latent group the reference is :mod:`acdctool.models.nvae_dist` in float64 (observed
1e-7–4e-6), for the 3×3 convolution ``F.conv2d`` in float64 (observed 1e-7–4e-6), for the
fused middle its three layers on torch's ops in float64 (observed 1e-7–5e-6).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acdctool.models import nvae_kernels as kernels
from acdctool.models.nvae import NVAE
from acdctool.models.nvae_cells import BatchNormSiLU, Conv1x1, Conv3x3, DecoderCell, DepthwiseConv, UpCell
from acdctool.models.nvae_dist import Normal

TOL = 1e-5
ARGS = {"image_size": 32, "scales": 2, "groups_per_scale": (2, 1), "latent_channels": 4}


def _close(a: torch.Tensor, ref: torch.Tensor) -> bool:
    a, ref = a.detach(), ref.detach()
    return float((a - ref).abs().max()) <= TOL * float(ref.abs().max())


@pytest.fixture(scope="module")
def kernel() -> None:
    error = kernels.load()
    if error is not None and (shutil.which("ninja") is None or shutil.which("c++") is None):
        pytest.skip(f"no ninja or C++ compiler and no cached build: {error}")
    assert error is None, error  # with a toolchain present the build must work


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


# channel counts with and without a tail beyond the 16-wide blocks, sides below and above K
@pytest.mark.parametrize(("channels", "side", "k"), [(48, 16, 5), (20, 9, 5), (35, 7, 3), (16, 3, 5), (8, 1, 3)])
def test_dwconv_matches_conv2d_forward_and_gradients(kernel: None, channels: int, side: int, k: int) -> None:
    g = torch.Generator().manual_seed(channels + side)
    x = _cl(torch.randn(3, channels, side, side + 2, generator=g)).requires_grad_()
    w = torch.randn(channels, 1, k, k, generator=g).requires_grad_()
    grad = torch.randn(3, channels, side, side + 2, generator=g)
    ref = F.conv2d(x, w, padding=k // 2, groups=channels)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x, w), grad)
    out = kernels.depthwise_conv2d(x, w)
    gx, gw = torch.autograd.grad(out, (x, w), grad)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _close(out, ref) and _close(gx, ref_gx) and _close(gw, ref_gw)
    assert gw.shape == w.shape


def test_dwconv_takes_any_input_layout(kernel: None) -> None:
    x, w = torch.randn(2, 16, 6, 6), torch.randn(16, 1, 5, 5)
    assert _close(kernels.depthwise_conv2d(x, w), F.conv2d(x, w, padding=2, groups=16))


def test_dwconv_registrations_pass_torch_opcheck(kernel: None) -> None:
    """Schema, fake-tensor (shapes and strides for torch.compile) and autograd registrations."""
    x = _cl(torch.randn(2, 16, 6, 6)).requires_grad_()
    w = torch.randn(16, 1, 5, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.acdctool.dwconv2d.default, (x, w))


def test_depthwise_layer_uses_the_kernel_only_where_it_applies(kernel: None) -> None:
    conv = DepthwiseConv(16, 5)
    x = _cl(torch.randn(2, 16, 8, 8))
    assert kernels.dwconv_usable(x, conv)
    assert not kernels.dwconv_usable(x.contiguous(), conv)  # NCHW: torch's convolution
    assert not kernels.dwconv_usable(x.bfloat16(), conv)
    assert not kernels.dwconv_usable(x, nn.Conv2d(16, 16, 5, padding=2, groups=16, bias=True))
    assert not kernels.dwconv_usable(x, nn.Conv2d(16, 16, 5, padding=1, groups=16, bias=False))
    assert not kernels.dwconv_usable(x, nn.Conv2d(16, 16, 5, padding=2, stride=2, groups=16, bias=False))
    ref = F.conv2d(x, conv.weight, padding=2, groups=16)
    assert _close(conv(x), ref) and _close(conv(x.contiguous()), ref)


# output channels 4 and 8, inputs one or several groups of them (the 3-gram stem: 12 -> 4);
# sides with one and several 16-lane vectors a row, a single row, rows of whole vectors (the
# grouped-broadcast kernels, 4 and 8 channels out, run-time and fixed input widths); the wide kernels: the latent
# heads (8/16/32 -> 40, a half-used last vector), the encoder cells (16, 32), 24, 48, bands of rows
# that do not divide the height
@pytest.mark.parametrize(
    ("cin", "cout", "height", "width", "bias"),
    [
        (4, 4, 9, 12, True),
        (4, 4, 1, 4, False),
        (8, 8, 6, 10, True),
        (12, 4, 5, 8, True),
        (16, 8, 3, 4, False),
        (4, 4, 3, 16, True),
        (12, 4, 2, 32, True),
        (8, 8, 5, 16, False),
        (16, 8, 3, 32, True),
        (8, 40, 5, 32, True),
        (32, 40, 17, 16, True),
        (16, 16, 3, 16, False),
        (16, 32, 9, 32, True),
        (24, 24, 2, 16, True),
        (8, 48, 1, 48, False),
    ],
)
def test_conv3x3_matches_conv2d_forward_and_gradients(
    kernel: None, cin: int, cout: int, height: int, width: int, bias: bool
) -> None:
    g = torch.Generator().manual_seed(cin + height)
    x = _cl(torch.randn(3, cin, height, width, generator=g)).requires_grad_()
    w = torch.randn(cout, cin, 3, 3, generator=g).requires_grad_()
    b = torch.randn(cout, generator=g).requires_grad_() if bias else None
    grad = _cl(torch.randn(3, cout, height, width, generator=g))
    inputs = [x, w] + ([b] if b is not None else [])
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    out = kernels.conv3x3(x, w, b)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_grads = torch.autograd.grad(ref, inputs, grad.double())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _close(out, ref) and all(_close(a, r) for a, r in zip(grads, ref_grads, strict=True))
    # only the gradients asked for (the stem's input needs none)
    (gw,) = torch.autograd.grad(kernels.conv3x3(x.detach(), w, b), (w,), grad)
    assert _close(gw, ref_grads[1])


def test_conv3x3_registrations_pass_torch_opcheck(kernel: None) -> None:
    x = _cl(torch.randn(2, 4, 5, 8)).requires_grad_()
    w, b = torch.randn(4, 4, 3, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.acdctool.conv3x3.default, (x, w, b))
    torch.library.opcheck(torch.ops.acdctool.conv3x3.default, (x, w, None))
    x = _cl(torch.randn(2, 4, 3, 16)).requires_grad_()  # rows of whole vectors: the grouped broadcasts
    torch.library.opcheck(torch.ops.acdctool.conv3x3.default, (x, w, b))
    x = _cl(torch.randn(2, 8, 3, 16)).requires_grad_()
    w, b = torch.randn(40, 8, 3, 3, requires_grad=True), torch.randn(40, requires_grad=True)
    torch.library.opcheck(torch.ops.acdctool.conv3x3.default, (x, w, b))
    torch.library.opcheck(torch.ops.acdctool.conv3x3.default, (x, w[:16], None))


# the permute kernel (rows under whole vectors), the grouped broadcasts (4 and 8 channels, rows
# of 16), the wide kernels (32 channels; 8 -> 40 -> 8 with the grad input into 8 channels)
@pytest.mark.parametrize(("c", "hidden", "width"), [(4, 4, 8), (4, 4, 16), (8, 8, 16), (32, 32, 16), (8, 40, 16)])
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_conv3x3_keeps_the_kernel_and_matches_eager(
    kernel: None, backend: str, c: int, hidden: int, width: int
) -> None:
    torch._dynamo.reset()  # every case compiles nn.Sequential.forward anew: no recompile limit across cases
    torch.manual_seed(0)

    def layers() -> nn.Module:
        return nn.Sequential(Conv3x3(c, hidden), BatchNormSiLU(hidden), Conv3x3(hidden, c, bias=False)).train()

    eager = layers().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    twin = layers().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    assert kernels.conv3x3_usable(_cl(torch.randn(2, c, 6, width)), eager[0])
    assert kernels.conv3x3_usable(_cl(torch.randn(2, hidden, 6, width)), eager[2])
    twin.load_state_dict(eager.state_dict())
    compiled: Any = torch.compile(twin, backend=backend, fullgraph=True)
    x = _cl(torch.randn(2, c, 6, width))
    results = []
    for model in (eager, compiled):
        xi = x.clone().requires_grad_()
        out = model(xi)
        results.append((out, *torch.autograd.grad(out.square().sum(), (xi, *model.parameters()))))
    assert all(_close(c, e) for c, e in zip(results[1], results[0], strict=True))


def test_conv3x3_layer_uses_the_kernel_only_where_it_applies(kernel: None) -> None:
    conv = Conv3x3(4, 4)
    assert isinstance(conv, nn.Conv2d) and sorted(conv.state_dict()) == ["bias", "weight"]
    x = _cl(torch.randn(2, 4, 6, 8))
    assert kernels.conv3x3_usable(x, conv)
    assert not kernels.conv3x3_usable(x.contiguous(), conv) and not kernels.conv3x3_usable(x.bfloat16(), conv)
    assert not kernels.conv3x3_usable(_cl(torch.randn(2, 4, 6, 6)), conv)  # a row of 24 floats
    assert kernels.conv3x3_usable(_cl(torch.randn(2, 12, 6, 8)), Conv3x3(12, 4))  # the 3-gram stem
    assert not kernels.conv3x3_usable(_cl(torch.randn(2, 6, 6, 8)), Conv3x3(6, 4))  # not groups of 4
    assert kernels.conv3x3_usable(_cl(torch.randn(2, 8, 6, 16)), Conv3x3(8, 40))  # a latent head
    assert not kernels.conv3x3_usable(_cl(torch.randn(2, 8, 6, 8)), Conv3x3(8, 40))  # a row under 16 pixels
    assert not kernels.conv3x3_usable(_cl(torch.randn(2, 12, 6, 16)), Conv3x3(12, 16))  # not groups of 8
    assert not kernels.conv3x3_usable(_cl(torch.randn(2, 8, 6, 16)), Conv3x3(8, 64))  # oneDNN's own width
    assert not kernels.conv3x3_usable(x, nn.Conv2d(4, 4, 3, padding=1, stride=2))
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert _close(conv(x), ref) and torch.equal(conv(x.contiguous()), ref)


@pytest.mark.parametrize(("channels", "side"), [(48, 16), (4, 32), (20, 9), (35, 5)])
def test_bn_silu_matches_batch_norm_then_silu(kernel: None, channels: int, side: int) -> None:
    """Output, gradients of input, scale and shift, running statistics: against float64 torch."""
    g = torch.Generator().manual_seed(channels)
    x = _cl(torch.randn(4, channels, side, side, generator=g) * 3 + 5)
    grad = _cl(torch.randn(4, channels, side, side, generator=g))
    fused = BatchNormSiLU(channels, momentum=0.2).train()
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5, generator=g)
        fused.bias.uniform_(-0.5, 0.5, generator=g)
        fused.running_var.uniform_(0.5, 2.0, generator=g)
    ref = nn.BatchNorm2d(channels, momentum=0.2).double().train()
    ref.load_state_dict(fused.state_dict())
    assert kernels.bn_silu_usable(x, fused)
    xk, xr = x.clone().requires_grad_(), x.double().requires_grad_()
    out, ref_out = fused(xk), F.silu(ref(xr))
    grads = torch.autograd.grad(out, (xk, fused.weight, fused.bias), grad)
    ref_grads = torch.autograd.grad(ref_out, (xr, ref.weight, ref.bias), grad.double())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _close(out, ref_out.float())
    assert all(_close(a, b.float()) for a, b in zip(grads, ref_grads, strict=True))
    assert _close(fused.running_mean, ref.running_mean.float()) and _close(fused.running_var, ref.running_var.float())
    assert int(fused.num_batches_tracked) == 1


def test_bn_silu_layer_uses_the_kernel_only_in_training(kernel: None) -> None:
    bn = BatchNormSiLU(8)
    x = _cl(torch.randn(2, 8, 4, 4))
    assert kernels.bn_silu_usable(x, bn)
    assert not kernels.bn_silu_usable(x.contiguous(), bn) and not kernels.bn_silu_usable(x.bfloat16(), bn)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # --precision bf16: torch's ops, as before
        assert not kernels.bn_silu_usable(x, bn) and not kernels.dwconv_usable(x, DepthwiseConv(8, 3))
    bn.eval()
    assert not kernels.bn_silu_usable(x, bn)
    expected = F.silu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
    assert torch.equal(bn(x), expected)


def test_bn_silu_registrations_pass_torch_opcheck(kernel: None) -> None:
    x = _cl(torch.randn(2, 8, 4, 4)).requires_grad_()
    w, b = torch.rand(8, requires_grad=True), torch.rand(8, requires_grad=True)
    torch.library.opcheck(torch.ops.acdctool.bn_silu.default, (x, w, b, 1e-5))


def _middle(channels: int, k: int, g: torch.Generator) -> nn.Sequential:
    """BN-SiLU, depthwise K×K, BN-SiLU as a decoder cell lays them out, with trained-looking parameters."""
    layers = nn.Sequential(
        BatchNormSiLU(channels, momentum=0.2),
        nn.Identity(),
        DepthwiseConv(channels, k),
        BatchNormSiLU(channels),
        nn.Identity(),
    ).train()
    with torch.no_grad():
        for bn in (layers[0], layers[3]):
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.uniform_(-0.5, 0.5, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
        layers[2].weight.normal_(generator=g)
    return layers


# one band and several (band height 512 KiB / (W·C·4 B)), K 5 and 3, a single row
@pytest.mark.parametrize(
    ("shape", "k"), [((3, 48, 16, 18), 5), ((1, 16, 600, 16), 5), ((2, 32, 7, 5), 3), ((2, 16, 1, 3), 5)]
)
def test_middle_kernel_matches_batch_norm_dwconv_batch_norm(kernel: None, shape: tuple[int, ...], k: int) -> None:
    """Output, the gradients of the input and of all five parameters, and both batch norms'
    running statistics of the fused op against the three layers in float64 on torch's ops."""
    g = torch.Generator().manual_seed(shape[1] + shape[2])
    fused = _middle(shape[1], k, g)
    ref = _middle(shape[1], k, g).double()
    ref.load_state_dict(fused.state_dict())
    x = _cl(torch.randn(shape, generator=g) * 3 + 5)
    grad = _cl(torch.randn(shape, generator=g))
    assert kernels.middle_usable(x, fused[0], fused[2], fused[3])
    xk, xr = x.clone().requires_grad_(), x.double().requires_grad_()
    out = kernels.bn_silu_dwconv_bn_silu(xk, fused[0], fused[2], fused[3])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels._STATE, "ready", False)
        ref_out = ref(xr)
    grads = torch.autograd.grad(out, (xk, *fused.parameters()), grad)
    ref_grads = torch.autograd.grad(ref_out, (xr, *ref.parameters()), grad.double())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _close(out, ref_out.float())
    assert len(grads) == 6 and all(_close(a, b.float()) for a, b in zip(grads, ref_grads, strict=True))
    for key, value in ref.state_dict().items():
        assert _close(fused.state_dict()[key].float(), value.float()), key
    assert int(fused[0].num_batches_tracked) == int(fused[3].num_batches_tracked) == 1


def test_middle_registrations_pass_torch_opcheck(kernel: None) -> None:
    x = _cl(torch.randn(2, 16, 5, 6)).requires_grad_()
    params = [torch.rand(16) + 0.5, torch.rand(16), torch.randn(16, 1, 5, 5), torch.rand(16) + 0.5, torch.rand(16)]
    params = [p.requires_grad_() for p in params]
    torch.library.opcheck(torch.ops.acdctool.bn_silu_dwconv_bn_silu.default, (x, *params, 1e-5, 1e-3))


def test_decoder_cells_use_the_middle_kernel_only_where_it_applies(
    kernel: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training, channels_last, hidden channels a multiple of 16: the kernel (outputs as the
    cell on torch's ops); evaluation, NCHW or 4·6 = 24 hidden channels: the layers one by one."""
    calls: list[int] = []
    real = kernels.bn_silu_dwconv_bn_silu

    def counted(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
        calls.append(x.shape[1])
        return real(x, *layers)  # type: ignore[arg-type]

    monkeypatch.setattr(kernels, "bn_silu_dwconv_bn_silu", counted)
    torch.manual_seed(0)
    for cell in (DecoderCell(8), UpCell(16), DecoderCell(4)):
        plain = type(cell)(cell.body[1].in_channels)
        plain.load_state_dict(cell.state_dict())
        x = _cl(torch.randn(2, cell.body[1].in_channels, 8, 8))
        calls.clear()
        out = cell.train()(x)
        assert calls == ([] if cell.body[1].in_channels == 4 else [cell.body[1].out_channels])
        with monkeypatch.context() as patch:
            patch.setattr(kernels._STATE, "ready", False)
            ref = plain.train()(x)
        assert _close(out, ref)
        calls.clear()
        cell(x.contiguous()), cell.eval()(x)
        assert calls == []


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_decoder_cell_keeps_the_middle_kernel_and_matches_eager(kernel: None, backend: str) -> None:
    """fullgraph compile (no graph break) of a decoder cell on the fused op: outputs, gradients
    and running statistics equal the eager cell's. (The first batch norm's shift gets a zero
    gradient in exact arithmetic, the training-mode batch norm after the 1×1 convolution removes
    it, so gradients are compared to 1e-5 of the largest gradient of the cell.)"""
    torch.manual_seed(0)
    eager = DecoderCell(8).train().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with torch.no_grad():  # no statistic zero by construction (the initial shifts are)
        for m in eager.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.5, 0.5)
    twin = DecoderCell(8).train().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    twin.load_state_dict(eager.state_dict())
    compiled: Any = torch.compile(twin, backend=backend, fullgraph=True)
    x = _cl(torch.randn(2, 8, 12, 10))
    for _ in range(2):
        results = []
        for model in (eager, compiled):
            xi = x.clone().requires_grad_()
            out = model(xi)
            results.append((out, torch.autograd.grad(out.square().sum(), (xi, *model.parameters()))))
        (out_c, grads_c), (out_e, grads_e) = results
        scale = max(float(g.abs().max()) for g in grads_e)
        assert _close(out_c, out_e)
        assert all(float((c - e).abs().max()) <= TOL * scale for c, e in zip(grads_c, grads_e, strict=True))
    for key, value in eager.state_dict().items():
        assert _close(twin.state_dict()[key].float(), value.float()), key


def _latent_reference(
    prior: torch.Tensor | None, post: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z and the per-sample KL of the model's eager path, in float64."""
    z_shape = eps.shape
    p = Normal.standard(eps.new_zeros(z_shape).double()) if prior is None else Normal.from_params(prior.double())
    q = p.residual(post.double())
    assert hasattr(q, "delta_mu")
    dm, dl, ls_p = q.delta_mu, q.delta_log_sigma, p.log_sigma  # type: ignore[attr-defined]
    kl = 0.5 * (dm * dm * torch.exp(-2 * ls_p) + torch.exp(2 * dl) - 2 * dl - 1)  # kl_residual, in float64
    return q.mu + q.sigma * eps.double(), kl.sum((1, 2, 3))


# Z with and without a tail beyond the 16-wide blocks; the top group has no prior (N(0, I))
@pytest.mark.parametrize(("latent", "with_prior"), [(20, True), (20, False), (4, True), (35, True), (16, False)])
def test_latent_matches_residual_normal_sample_and_kl(kernel: None, latent: int, with_prior: bool) -> None:
    """z, the KL and the gradients of both heads' raw outputs against the float64 eager maths
    (soft clamps, residual posterior, reparameterised draw, closed-form KL)."""
    g = torch.Generator().manual_seed(latent)
    shape = (3, 2 * latent, 5, 6)
    post = _cl(torch.randn(shape, generator=g) * 4).requires_grad_()  # some values beyond the clamp
    prior = _cl(torch.randn(shape, generator=g) * 4).requires_grad_() if with_prior else None
    eps = _cl(torch.randn(3, latent, 5, 6, generator=g))
    grad_z, grad_kl = _cl(torch.randn(3, latent, 5, 6, generator=g)), torch.randn(3, generator=g)
    assert kernels.latent_usable(post, prior)
    z, kl = kernels.latent_sample_kl(prior, post, eps)
    ref_z, ref_kl = _latent_reference(prior, post, eps)
    inputs = [post] + ([prior] if prior is not None else [])
    grads = torch.autograd.grad([z, kl], inputs, [grad_z, grad_kl])
    ref_grads = torch.autograd.grad([ref_z, ref_kl], inputs, [grad_z.double(), grad_kl.double()])
    assert z.is_contiguous(memory_format=torch.channels_last) and kl.shape == (3,)
    assert _close(z, ref_z) and _close(kl, ref_kl)
    assert all(_close(a, b) for a, b in zip(grads, ref_grads, strict=True))


def test_latent_registrations_pass_torch_opcheck(kernel: None) -> None:
    post = _cl(torch.randn(2, 40, 4, 4)).requires_grad_()
    prior = _cl(torch.randn(2, 40, 4, 4)).requires_grad_()
    eps = _cl(torch.randn(2, 20, 4, 4))
    torch.library.opcheck(torch.ops.acdctool.latent_sample_kl.default, (prior, post, eps))
    torch.library.opcheck(torch.ops.acdctool.latent_sample_kl.default, (None, post, eps))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_latent_group_keeps_the_kernel_and_matches_eager(kernel: None, backend: str) -> None:
    """A prior head, the kernel and a loss on z and the KL, compiled whole (fullgraph)."""
    torch.manual_seed(0)
    head = nn.Conv2d(8, 16, 3, padding=1).to(memory_format=torch.channels_last)

    def group(x: torch.Tensor, post: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        z, kl = kernels.latent_sample_kl(head(x), post, eps)
        return z.square().sum() + kl.sum()

    compiled: Any = torch.compile(group, backend=backend, fullgraph=True)
    x, eps = _cl(torch.randn(2, 8, 6, 6)), _cl(torch.randn(2, 8, 6, 6))
    post = _cl(torch.randn(2, 16, 6, 6)).requires_grad_()
    results = []
    for fn in (group, compiled):
        out = fn(x, post, eps)
        results.append((out, *torch.autograd.grad(out, (post, head.weight))))
    assert all(_close(a, b) for a, b in zip(results[1], results[0], strict=True))


def test_latent_kernel_only_where_it_applies(kernel: None) -> None:
    post = _cl(torch.randn(2, 8, 4, 4))
    assert kernels.latent_usable(post, None) and kernels.latent_usable(post, post.clone())
    assert not kernels.latent_usable(post.contiguous(), None) and not kernels.latent_usable(post.double(), None)
    assert not kernels.latent_usable(post, _cl(torch.randn(2, 8, 2, 2)))
    assert not kernels.latent_usable(_cl(torch.randn(2, 7, 4, 4)), None)


def test_training_forward_on_the_kernels_matches_the_plain_model(kernel: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole channels_last training pass with every kernel (latent groups included) against
    the NCHW model on torch's ops: same latents from the same seed, KL, logits and gradients."""
    calls: list[bool] = []
    real = kernels.latent_sample_kl

    def counted(prior: torch.Tensor | None, post: torch.Tensor, eps: torch.Tensor) -> Any:
        calls.append(prior is None)
        return real(prior, post, eps)

    monkeypatch.setattr(kernels, "latent_sample_kl", counted)
    convs: list[int] = []
    real_conv = kernels.conv3x3

    def counted_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        convs.append(x.shape[-1])
        return real_conv(x, weight, bias)

    monkeypatch.setattr(kernels, "conv3x3", counted_conv)
    middles: list[int] = []
    real_middle = kernels.bn_silu_dwconv_bn_silu

    def counted_middle(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
        middles.append(x.shape[1])
        return real_middle(x, *layers)  # type: ignore[arg-type]

    monkeypatch.setattr(kernels, "bn_silu_dwconv_bn_silu", counted_middle)
    torch.manual_seed(0)
    model = NVAE(**ARGS).train()
    fast = NVAE(**ARGS).train().to(memory_format=torch.channels_last)
    fast.load_state_dict(model.state_dict())
    x = F.one_hot(torch.randint(0, 4, (2, 32, 32), generator=torch.Generator().manual_seed(1)), 4)
    x = x.permute(0, 3, 1, 2).float()
    outs = []
    for m, xi, on_kernels in ((model, x, False), (fast, _cl(x), True)):
        with monkeypatch.context() as patch:
            if not on_kernels:
                patch.setattr(kernels._STATE, "ready", False)
            torch.manual_seed(3)
            out = m(xi)
        loss = out.logits.square().mean() + torch.stack(out.kl).sum()
        loss.backward()
        outs.append((out, {n: p.grad for n, p in m.named_parameters()}))
    (ref, ref_grads), (got, grads) = outs
    assert calls == [True, False, False]  # every group of the channels_last pass, the top one without prior
    assert convs.count(32) == 4 and len(convs) > 4  # stem, pre-processing cell, head (32²), and more
    assert middles == [96, 96, 96, 48, 48, 48]  # every decoder and up-sampling cell of the pass
    assert all(_close(a, b) for a, b in zip(got.z, ref.z, strict=True))
    assert all(_close(a, b) for a, b in zip(got.kl, ref.kl, strict=True))
    assert _close(got.logits, ref.logits)
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    assert all(float((grads[n] - g).abs().max()) <= 1e-4 * scale for n, g in ref_grads.items())


def test_failed_build_falls_back_to_torch_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build failure is returned once as one line, never raised; layers stay on F.conv2d."""
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(kernels, "_STATE", kernels._State())
    monkeypatch.setattr(kernels, "_build", broken)
    error = kernels.load()
    assert error == "RuntimeError: Ninja is required to load C++ extensions"
    assert kernels.load() == error and len(calls) == 1  # tried once per process
    assert not kernels.available()
    conv = DepthwiseConv(16, 5)
    x = _cl(torch.randn(2, 16, 8, 8))
    assert not kernels.dwconv_usable(x, conv)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, padding=2, groups=16))
    bn = BatchNormSiLU(16)
    assert not kernels.bn_silu_usable(x, bn)
    assert torch.equal(bn(x), F.silu(F.batch_norm(x, None, None, bn.weight, bn.bias, training=True)))


def test_task_reports_a_failed_build_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from acdctool.config import TrainNvaeConfig
    from acdctool.train.nvae_task import NvaeTask

    monkeypatch.setattr(kernels, "_STATE", kernels._State())
    monkeypatch.setattr(kernels, "_build", lambda: (_ for _ in ()).throw(OSError("c++: not found")))
    passthrough: Any = lambda module, **_: module  # noqa: E731 - stands in for torch.compile
    monkeypatch.setattr(torch, "compile", passthrough)
    config = TrainNvaeConfig(scales=2, groups_per_scale=(2, 1), betas=(1.0, 1.0), compile=True)
    task = NvaeTask(dict(NVAE(**ARGS).args), config, steps_per_epoch=1, val_spacing=None)  # type: ignore[arg-type]
    model = task.build_model()
    notes: list[str] = []
    x = _cl(torch.zeros(2, 4, 32, 32))
    task.forward(model, x, notes.append)
    task.forward(model, x, notes.append)
    assert len(notes) == 1 and "kernels unavailable (OSError: c++: not found)" in notes[0]


def test_conv1x1_is_a_conv2d_with_the_same_maths() -> None:
    torch.manual_seed(0)
    conv = Conv1x1(12, 7)
    assert isinstance(conv, nn.Conv2d) and sorted(conv.state_dict()) == ["bias", "weight"]
    x = torch.randn(3, 12, 5, 6)
    ref = F.conv2d(x, conv.weight, conv.bias)
    out = conv(_cl(x))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _close(out, ref) and torch.equal(conv(x), ref)  # NCHW input: nn.Conv2d itself
    gx, gw = torch.autograd.grad(conv(_cl(x.requires_grad_())).sum(), (x, conv.weight))
    ref_gx, ref_gw = torch.autograd.grad(F.conv2d(x, conv.weight, conv.bias).sum(), (x, conv.weight))
    assert _close(gx, ref_gx) and _close(gw, ref_gw)


def test_checkpoints_of_the_plain_model_load_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same parameter names, shapes and initial values as the model built from torch's layers
    (nn.Conv2d, nn.BatchNorm2d then nn.SiLU), and the same outputs."""
    from acdctool.models import nvae, nvae_cells

    torch.manual_seed(0)
    new = NVAE(**ARGS)

    def conv1x1(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 1, bias=bias)

    def depthwise(channels: int, k: int) -> nn.Conv2d:
        return nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False)

    def conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)

    for module in (nvae, nvae_cells):
        monkeypatch.setattr(module, "Conv1x1", conv1x1, raising=False)
        monkeypatch.setattr(module, "Conv3x3", conv3x3, raising=False)
    monkeypatch.setattr(nvae_cells, "DepthwiseConv", depthwise)
    monkeypatch.setattr(nvae_cells, "_bn_silu", lambda c, m: [nn.BatchNorm2d(c, momentum=m), nn.SiLU()])
    torch.manual_seed(0)
    old = NVAE(**ARGS)
    assert any(isinstance(m, Conv1x1) for m in new.modules())
    assert not any(isinstance(m, (Conv1x1, Conv3x3, DepthwiseConv, BatchNormSiLU)) for m in old.modules())
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert list(old_sd) == list(new_sd)
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd)  # the seed gives the same init
    x = torch.randn(2, 4, 32, 32)
    new.eval(), old.eval()
    assert torch.allclose(new.reconstruct(x), old.reconstruct(x), atol=1e-5)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_layers_keep_the_kernels_and_match_eager(kernel: None, backend: str) -> None:
    """torch.compile traces the ops as single nodes (fullgraph: no graph break) through their
    fake and autograd rules; outputs, gradients and running statistics match the eager layers."""
    torch.manual_seed(0)
    eager = nn.Sequential(BatchNormSiLU(20, momentum=0.3), DepthwiseConv(20, 5), BatchNormSiLU(20)).train()
    twin = nn.Sequential(BatchNormSiLU(20, momentum=0.3), DepthwiseConv(20, 5), BatchNormSiLU(20)).train()
    twin.load_state_dict(eager.state_dict())
    compiled: Any = torch.compile(twin, backend=backend, fullgraph=True)
    x = _cl(torch.randn(2, 20, 9, 9) * 2 + 1)
    for _ in range(2):  # the second call also checks the running statistics carried over
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_e, out_c = eager(xe), compiled(xc)
        (gx_e,) = torch.autograd.grad(out_e.square().sum(), xe)
        (gx_c,) = torch.autograd.grad(out_c.square().sum(), xc)
        assert _close(out_c, out_e) and _close(gx_c, gx_e)
    for key, value in eager.state_dict().items():
        assert _close(twin.state_dict()[key].float(), value.float()), key
    assert int(twin[0].num_batches_tracked) == 2


def test_old_layout_state_dict_loads_and_trains_alike(kernel: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state dict of the model as it was built before (nn.Conv2d, nn.BatchNorm2d then nn.SiLU)
    loads strictly; the training-mode step on the kernels gives its outputs and running stats."""
    from acdctool.models import nvae, nvae_cells

    torch.manual_seed(1)
    new = NVAE(**ARGS)
    monkeypatch.setattr(nvae, "Conv1x1", lambda cin, cout, bias=True: nn.Conv2d(cin, cout, 1, bias=bias))
    monkeypatch.setattr(nvae_cells, "Conv1x1", lambda cin, cout, bias=True: nn.Conv2d(cin, cout, 1, bias=bias))
    monkeypatch.setattr(
        nvae_cells, "DepthwiseConv", lambda c, k: nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
    )
    monkeypatch.setattr(nvae_cells, "_bn_silu", lambda c, m: [nn.BatchNorm2d(c, momentum=m), nn.SiLU()])
    torch.manual_seed(2)
    old = NVAE(**ARGS)
    with torch.no_grad():  # trained-looking statistics, so a dropped buffer would show
        for name, buf in old.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    new.load_state_dict(old.state_dict(), strict=True)
    x = _cl(F.one_hot(torch.randint(0, 4, (2, 32, 32)), 4).permute(0, 3, 1, 2).float())
    torch.manual_seed(3)
    out_new = new.to(memory_format=torch.channels_last).train()(x)
    torch.manual_seed(3)
    out_old = old.train()(x.contiguous())
    assert any(isinstance(m, (DepthwiseConv, BatchNormSiLU)) for m in new.modules())
    assert torch.allclose(out_new.logits, out_old.logits, atol=1e-4, rtol=1e-4)
    new_sd, old_sd = new.state_dict(), old.state_dict()
    assert list(new_sd) == list(old_sd)
    assert all(torch.allclose(new_sd[k].float(), old_sd[k].float(), atol=1e-5) for k in old_sd)


class _FakeBuild:
    """Stands in for cpp_extension.load: writes the library into the build folder it is given."""

    def __init__(self) -> None:
        self.folders: list[Path] = []

    def __call__(self, *, name: str, build_directory: str, **_: Any) -> str:
        folder = Path(build_directory)
        self.folders.append(folder)
        (folder / f"{name}.so").write_text("built")
        return str(folder / f"{name}.so")


def test_build_happens_privately_then_is_published_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process compiles in its own folder (no shared lock file to go stale) and publishes
    it with one rename; the next process loads the published library without compiling."""
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build, loaded = _FakeBuild(), []
    monkeypatch.setattr(cpp_extension, "load", build)
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.setattr(kernels, "_register", lambda: None)
    final = kernels.cache_dir()
    kernels._build()
    assert len(build.folders) == 1 and build.folders[0] != final and build.folders[0].parent == final.parent
    library = final / f"{kernels._library_name(final)}.so"
    assert library.read_text() == "built" and loaded == []
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no private folder left
    kernels._build()  # a later process: the cached library, no compiler
    assert len(build.folders) == 1 and loaded == [str(library)]


def test_a_concurrent_publisher_wins_and_leftovers_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernels, "_register", lambda: None)
    final = kernels.cache_dir()
    name = kernels._library_name(final)

    def racing(*, name: str, build_directory: str, **_: Any) -> str:
        final.mkdir(parents=True)  # another process publishes while this one compiles
        (final / f"{name}.so").write_text("theirs")
        (Path(build_directory) / f"{name}.so").write_text("ours")
        return ""

    monkeypatch.setattr(cpp_extension, "load", racing)
    kernels._build()
    assert (final / f"{name}.so").read_text() == "theirs"
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    # a folder without a library (an interrupted build of an older layout, its lock file) is replaced
    for p in final.iterdir():
        p.unlink()
    (final / "lock").write_text("")
    monkeypatch.setattr(cpp_extension, "load", _FakeBuild())
    kernels._build()
    assert sorted(p.name for p in final.iterdir()) == [f"{name}.so"]


def test_a_failed_compile_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.cpp_extension as cpp_extension

    def broken(**_: Any) -> str:
        raise RuntimeError("Error building extension")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(kernels, "_STATE", kernels._State())
    assert kernels.load() == "RuntimeError: Error building extension"
    assert list(kernels.cache_dir().parent.iterdir()) == []


def test_nothing_builds_on_import_or_with_the_plain_model(tmp_path: Path) -> None:
    """Importing acdctool, the CLI, the model and the task, and a channels_last training-mode
    forward pass, neither build nor load the kernels (only the compiled CPU training step does)."""
    code = (
        "import torch, acdctool, acdctool.cli.app, acdctool.train.nvae_task\n"
        "from acdctool.models import nvae_kernels\n"
        "from acdctool.models.nvae import NVAE\n"
        "m = NVAE(image_size=32, scales=2, groups_per_scale=(1, 1)).to(memory_format=torch.channels_last)\n"
        "m.train()(torch.zeros(2, 4, 32, 32).contiguous(memory_format=torch.channels_last))\n"
        "assert not nvae_kernels._STATE.tried and not nvae_kernels.available()\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    assert not (tmp_path / "acdctool").exists()


def test_ninja_of_the_python_package_is_put_on_path_for_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)  # no ninja on PATH
    monkeypatch.setitem(sys.modules, "ninja", types.SimpleNamespace(BIN_DIR="/opt/ninja-pkg/bin"))
    before = os.environ.get("PATH", "")
    with kernels._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep)[0] == "/opt/ninja-pkg/bin"
    assert os.environ.get("PATH", "") == before


@pytest.mark.slow
def test_compiled_training_step_on_the_kernels_matches_eager_nchw(kernel: None) -> None:
    """The optimised step (channels_last, inductor, every kernel) against the plain NCHW model on
    torch's ops: the loss to 1e-5 and every gradient to 1e-4 of the largest (as in
    ``tests/train/test_nvae_fast.py``), with the same latents from the same seed."""
    from acdctool.config import TrainNvaeConfig
    from acdctool.models.nvae_loss import NVAELoss, NVAELossConfig
    from acdctool.train.compiled import CompiledStep

    config = TrainNvaeConfig(scales=2, groups_per_scale=(2, 1), betas=(1.0, 2.0), warmup_steps=50)
    torch.manual_seed(0)
    ref = NVAE(**ARGS).train()
    fast = NVAE(**ARGS).train().to(memory_format=torch.channels_last)
    fast.load_state_dict(ref.state_dict())
    labels = torch.randint(0, 4, (6, 32, 32), generator=torch.Generator().manual_seed(1))
    x = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    notes: list[str] = []
    step = CompiledStep(fast, enabled=True, note=notes.append)
    results = []
    for model, forward, xi in ((ref, ref, x.contiguous()), (fast, step, _cl(x))):
        with pytest.MonkeyPatch.context() as patch:
            if model is ref:
                patch.setattr(kernels._STATE, "ready", False)
            loss_fn = NVAELoss(model, NVAELossConfig.from_config(config))
            torch.manual_seed(123)
            loss, _ = loss_fn(forward(xi), labels, 10)
            loss.backward()
        results.append((loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}))
    assert step.compiled, notes
    (ref_loss, ref_grads), (loss, grads) = results
    assert abs(float(loss - ref_loss)) <= 1e-5 * abs(float(ref_loss))
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    assert all(float((grads[n] - g).abs().max()) <= 1e-4 * scale for n, g in ref_grads.items())
