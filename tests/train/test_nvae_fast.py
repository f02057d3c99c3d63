"""The optimised NVAE step (channels_last, torch.compile, bf16) against the eager NCHW step.

Tolerances (fp32): the loss agrees to a relative 1e-5 and every gradient element to 1e-4 of
the largest gradient magnitude in the model (a few small-gradient parameters would fail a
per-parameter relative test on float rounding alone); the optimised paths reorder floating
point sums (NHWC convolution kernels, fused loops), so bit-equality is not expected.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from acdctool.config import TrainNvaeConfig
from acdctool.data.loader import one_hot
from acdctool.models.nvae import NVAE
from acdctool.models.nvae_loss import NVAELoss, NVAELossConfig
from acdctool.train.compiled import CompiledStep, is_compile_error
from acdctool.train.nvae_task import NvaeTask

ARGS = {"image_size": 32, "scales": 2, "groups_per_scale": (2, 1), "latent_channels": 4}
LOSS_TOL, GRAD_TOL = 1e-5, 1e-4


def _config(**changes: Any) -> TrainNvaeConfig:
    return TrainNvaeConfig(scales=2, groups_per_scale=(2, 1), betas=(1.0, 2.0), warmup_steps=50, **changes)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 4, (6, 32, 32), generator=torch.Generator().manual_seed(1))
    return one_hot(labels).contiguous(), labels


def _step(model: torch.nn.Module, forward: Any, x: torch.Tensor, labels: torch.Tensor, config: TrainNvaeConfig):
    """Loss and gradients of one training step with the latents drawn from seed 123."""
    loss_fn = NVAELoss(model, NVAELossConfig.from_config(config))
    torch.manual_seed(123)
    loss, _ = loss_fn(forward(x), labels, 10)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _assert_close(loss, grads, ref_loss, ref_grads) -> None:
    assert abs(float(loss - ref_loss)) <= LOSS_TOL * abs(float(ref_loss))
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name, g in ref_grads.items():
        assert float((grads[name] - g).abs().max()) <= GRAD_TOL * scale, name


@pytest.fixture()
def base() -> NVAE:
    torch.manual_seed(0)
    return NVAE(**ARGS).train()


def test_channels_last_step_matches_eager_nchw(base: NVAE) -> None:
    """The task's forward (channels_last, compile off) against the plain NCHW model call."""
    config = _config(compile=False)
    x, labels = _batch()
    ref = copy.deepcopy(base)
    ref_loss, ref_grads = _step(ref, ref, x, labels, config)
    task = NvaeTask(dict(base.args), config, steps_per_epoch=1, val_spacing=None)  # type: ignore[arg-type]
    fast = copy.deepcopy(base).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    loss, grads = _step(fast, lambda v: task.forward(fast, v), xc, labels, config)
    _assert_close(loss, grads, ref_loss, ref_grads)
    # Same latents from the same seed in either layout (the noise is drawn in logical order).
    torch.manual_seed(5)
    z_ref = ref(x).z[-1]
    torch.manual_seed(5)
    z_fast = fast(xc).z[-1]
    assert torch.allclose(z_ref, z_fast, atol=1e-4)


def test_build_model_is_channels_last() -> None:
    task = NvaeTask(NVAE(**ARGS).args, _config(compile=False), steps_per_epoch=1, val_spacing=None)  # type: ignore[arg-type]
    model = task.build_model()
    conv = model.stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, _ = task._inputs({"gt": torch.zeros(2, 32, 32, dtype=torch.long)})
    assert x.is_contiguous(memory_format=torch.channels_last)


class _BrokenCompile:
    """Stands in for torch.compile: the compiled function fails like a missing C++ compiler."""

    def __call__(self, module: torch.nn.Module, **_: Any):
        from torch._inductor.exc import InductorError

        def compiled(*args: Any) -> Any:
            raise InductorError(RuntimeError("cc1plus: not found"), "no compiler")

        return compiled


def test_compile_failure_falls_back_to_eager_with_one_note(base: NVAE) -> None:
    notes: list[str] = []
    x, labels = _batch()
    ref = copy.deepcopy(base)
    ref_loss, ref_grads = _step(ref, ref, x, labels, _config())
    model = copy.deepcopy(base)
    step = CompiledStep(model, enabled=True, note=notes.append, compiler=_BrokenCompile())
    assert step.compiled
    loss, grads = _step(model, step, x, labels, _config())
    assert not step.compiled and len(notes) == 1
    assert "torch.compile failed" in notes[0] and "InductorError" in notes[0] and "\n" not in notes[0]
    assert torch.equal(loss, ref_loss) and all(torch.equal(grads[k], g) for k, g in ref_grads.items())
    step(x)  # later calls stay eager, with no second note
    assert len(notes) == 1


def test_model_errors_are_not_swallowed_as_compile_errors(base: NVAE) -> None:
    """A bad input still raises the model's own error through the compiled step."""
    from acdctool.errors import BadInputError

    def passthrough(module: torch.nn.Module, **_: Any):
        return module

    step = CompiledStep(copy.deepcopy(base), enabled=True, note=None, compiler=passthrough)
    with pytest.raises(BadInputError):
        step(torch.zeros(2, 3, 32, 32))
    assert not is_compile_error(BadInputError("x"))


def test_trial_leaves_no_trace(base: NVAE) -> None:
    """The first call's compile trial (forward and backward) restores BN statistics, grads and RNG."""
    model = copy.deepcopy(base)
    calls = []

    def counting(module: torch.nn.Module, **_: Any):
        def compiled(*args: Any) -> Any:
            calls.append(1)
            return module(*args)

        return compiled

    x, _ = _batch()
    torch.manual_seed(7)
    expected = copy.deepcopy(base)(x).logits  # what one plain forward gives after seed 7
    stats = [b.clone() for b in copy.deepcopy(base).buffers()]
    step = CompiledStep(model, enabled=True, note=None, compiler=counting)
    torch.manual_seed(7)
    out = step(x).logits
    assert len(calls) == 2  # the trial, then the real call
    assert torch.equal(out, expected)
    assert all(p.grad is None for p in model.parameters())
    after_one = copy.deepcopy(base)
    torch.manual_seed(7)
    after_one(x)  # one forward's worth of BN statistics (same latents), as the real call leaves
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), after_one.buffers(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(model.buffers(), stats, strict=True))


@pytest.mark.slow
def test_compiled_step_matches_eager(base: NVAE) -> None:
    """The real torch.compile (inductor) step: same loss and gradients as eager NCHW."""
    config = _config()
    x, labels = _batch()
    ref = copy.deepcopy(base)
    ref_loss, ref_grads = _step(ref, ref, x, labels, config)
    notes: list[str] = []
    model = copy.deepcopy(base).to(memory_format=torch.channels_last)
    step = CompiledStep(model, enabled=True, note=notes.append)
    loss, grads = _step(model, step, x.contiguous(memory_format=torch.channels_last), labels, config)
    assert step.compiled, notes
    _assert_close(loss, grads, ref_loss, ref_grads)


def test_bf16_step_runs_and_stays_close(base: NVAE) -> None:
    """bf16 autocast: a finite loss within a few percent of fp32 (its effect on quality is measured
    in the README); the KL stays fp32."""
    x, labels = _batch()
    ref = copy.deepcopy(base)
    ref_loss, _ = _step(ref, ref, x, labels, _config(compile=False))
    config = _config(compile=False, precision="bf16")
    task = NvaeTask(dict(base.args), config, steps_per_epoch=1, val_spacing=None)  # type: ignore[arg-type]
    model = copy.deepcopy(base).to(memory_format=torch.channels_last)
    out: dict[str, Any] = {}

    def forward(v: torch.Tensor) -> Any:
        out["o"] = task.forward(model, v)
        return out["o"]

    loss, grads = _step(model, forward, x.contiguous(memory_format=torch.channels_last), labels, config)
    assert out["o"].logits.dtype == torch.bfloat16 and all(k.dtype == torch.float32 for k in out["o"].kl)
    assert torch.isfinite(loss) and abs(float(loss - ref_loss)) <= 0.05 * abs(float(ref_loss))
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_validation_reports_dice_per_volume_and_per_slice(base: NVAE) -> None:
    """val_vdice_* is the 3D Dice of each volume's slices, averaged over volumes (numpy oracle)."""
    import numpy as np

    config = _config(compile=False)
    task = NvaeTask(dict(base.args), config, steps_per_epoch=1, val_spacing=np.ones((6, 2)), n_val_volumes=2)
    model = copy.deepcopy(base).eval()
    task.loss = NVAELoss(model, NVAELossConfig.from_config(config))
    x, labels = _batch()
    volume = torch.tensor([0, 0, 0, 1, 1, 1])
    batch = {"gt": labels, "volume": volume, "row": torch.arange(6)}
    with torch.no_grad():
        out = task.val_summary(task.val_step(model, batch))
        pred = model.reconstruct(x, mode="mean").argmax(1).numpy()
    gt = labels.numpy()
    per_volume = []
    for v in (0, 1):
        rows = volume.numpy() == v
        for label in (1, 2, 3):
            p, g = pred[rows] == label, gt[rows] == label
            per_volume.append(1.0 if p.sum() + g.sum() == 0 else 2 * (p & g).sum() / (p.sum() + g.sum()))
    assert out["vdice_mean"] == pytest.approx(float(np.mean(per_volume)), abs=1e-9)
    assert out["vdice_lv"] == pytest.approx((per_volume[2] + per_volume[5]) / 2, abs=1e-9)
    assert 0 <= out["dice_mean"] <= 1 and "valid_fraction" in out
