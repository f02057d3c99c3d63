"""The NVAE as a :class:`acdctool.train.loop.Task` (one trainer for all models), run by the ``train-nvae`` stage.

Three modes, picked by the config: ``input=gt`` auto-encodes ground-truth masks (the report's
first experiment); ``input=seg`` denoises (gen-seg masks in, ground truth out);
``context=3gram`` takes the previous/current/next masks of a make-3gram file (12 channels) and
predicts the ground-truth current slice. Validation decodes the posterior mean and reports the
reconstruction's Dice per class and its anatomical validity (the ``eval`` functions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from acdctool.config import Context, Masks, NvaeInput, Precision, TrainNvaeConfig
from acdctool.conventions import CLASSES, FOREGROUND
from acdctool.data.loader import Augment, argmax_labels, one_hot
from acdctool.metrics import anatomy
from acdctool.train.compiled import CompiledStep
from acdctool.train.interface import StepContext


def nvae_arrays(config: TrainNvaeConfig) -> tuple[str, str]:
    """(input array, target array) of the slice file for this mode."""
    gt, pred = Masks.GT.value, Masks.PRED.value
    if config.context == Context.TRIGRAM.value:
        return "context", gt
    return (gt, gt) if config.input == NvaeInput.GT.value else (pred, gt)


class NvaeTask:
    """NVAE training: one-hot masks in, 4-class logits out, β-weighted KL with warm-up.

    Args:
        model_args: :class:`acdctool.models.nvae.NVAE` constructor arguments.
        config: the stage config (loss and optimiser settings).
        steps_per_epoch: optimiser steps per epoch (length of the cosine schedule).
        val_spacing: (N_file, 2) pixel spacing (mm) of every file row, for anatomical validity.
        n_val_volumes: volumes in the validation dataset (its ``n_volumes``); when given,
            validation also reports each class's Dice per volume (3D overlap of a volume's slices, both empty →
            1), averaged over volumes (``val_vdice_*``), beside the per-slice mean (``val_dice_*``).
    """

    checkpoint_kind = "nvae-model"
    model_name = "nvae"
    best_metric = "val_select"
    """``val_dice_mean`` once the KL warm-up is over (or in the last epoch of a run shorter than
    it), -inf before, so never picked: during warm-up the KL barely counts and the model is an
    auto-encoder, not yet the shape model."""
    best_mode = "max"
    scheduler_interval = "step"

    def __init__(
        self,
        model_args: dict[str, Any],
        config: TrainNvaeConfig,
        steps_per_epoch: int,
        val_spacing: np.ndarray,
        n_val_volumes: int | None = None,
    ) -> None:
        self.model_args, self.config = dict(model_args), config
        self.input_key, self.target_key = nvae_arrays(config)
        self.total_steps = max(1, config.epochs * steps_per_epoch)
        self.val_spacing, self.n_val_volumes = val_spacing, n_val_volumes
        keys = tuple(dict.fromkeys((self.input_key, self.target_key)))
        self.augment = Augment(images=(), labels=keys, flip=0.0, rotate_deg=10.0, scale=1.1) if config.augment else None
        self.loss: Any = None
        self._step: CompiledStep | None = None
        self._warm = False  # the KL warm-up is over (set by train_step; drives best.pt)

    def build_model(self) -> torch.nn.Module:
        """The NVAE from ``model_args``; also builds its loss (``self.loss``) from the stage config."""
        from acdctool.models.nvae import NVAE
        from acdctool.models.nvae_loss import NVAELoss, NVAELossConfig

        model = NVAE.from_args(self.model_args)
        self.loss = NVAELoss(model, NVAELossConfig.from_config(self.config))
        # channels_last: oneDNN's depthwise 5×5 convolutions (a quarter of the step in NCHW)
        # run 2.5–3× faster in NHWC, forward and backward; the maths is unchanged.
        # (torch's stubs omit Module.to's memory_format keyword, which it has had since 1.5)
        return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def configure_optimizer(self, model: torch.nn.Module):
        c = self.config
        # foreach: one C++ loop per update op instead of a Python loop over the ~250 tensors
        # (torch picks it by itself on CUDA only); the same arithmetic, element by element.
        opt = torch.optim.Adamax(model.parameters(), lr=c.lr, eps=c.eps, weight_decay=c.weight_decay, foreach=True)
        floor = c.lr_min / c.lr

        def factor(step: int) -> float:
            if step < c.lr_warmup_steps:
                return (step + 1) / c.lr_warmup_steps
            progress = min(1.0, (step - c.lr_warmup_steps) / max(1, self.total_steps - c.lr_warmup_steps))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def state_dict(self) -> dict[str, Any]:
        """Task state for an exact resume: the power-iteration vectors of spectral regularisation."""
        return {} if self.loss is None else self.loss.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.loss is not None and state:
            self.loss.load_state_dict(state)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = one_hot(batch[self.input_key]).contiguous(memory_format=torch.channels_last)
        return x, batch[self.target_key]

    def forward(self, model: torch.nn.Module, x: torch.Tensor, note: Callable[[str], None] | None = None) -> Any:
        """The training forward pass ``model(x)``: compiled (``config.compile``) and in bf16
        autocast (``config.precision``) as configured; the loss is computed outside, in fp32."""
        if self._step is None or self._step.module is not model:
            if self.config.compile and x.device.type == "cpu":
                from acdctool.models import nvae_kernels

                error = nvae_kernels.load()
                if error is not None and note is not None:
                    note(f"CPU kernels unavailable ({error}); using torch's ops")
            self._step = CompiledStep(model, self.config.compile, note)
        bf16 = self.config.precision == Precision.BF16.value
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self._step(x)

    def train_step(self, model, batch: dict[str, torch.Tensor], ctx: StepContext):
        from acdctool.models.nvae_guard import check_finite

        # A run shorter than its warm-up still gets a best.pt: from its last epoch.
        self._warm = ctx.global_step + 1 >= min(self.config.warmup_steps, self.total_steps)
        if self.augment is not None:
            batch = self.augment(batch, ctx.generator)
        x, target = self._inputs(batch)
        out = self.forward(model, x, ctx.note)
        loss, terms = self.loss(out, target, ctx.global_step)
        # Name the term that blew up (and what to change) before the trainer's generic check;
        # on GPU only every 10 steps, since each check waits for the device.
        if ctx.device.type == "cpu" or ctx.global_step % 10 == 0:
            check_finite(terms)
        return loss, {k: v for k, v in terms.items() if k != "loss"}

    def val_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, target = self._inputs(batch)
        out = model(x)
        _, terms = self.loss(out, target, self.config.warmup_steps)
        pred = argmax_labels(model.reconstruct(x, mode="mean"))
        n = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
        dice = torch.zeros(len(FOREGROUND), dtype=torch.float64, device=x.device)
        v_inter = torch.zeros(self.n_val_volumes or 0, len(FOREGROUND), dtype=torch.float64, device=x.device)
        v_size = torch.zeros_like(v_inter)
        for i, label in enumerate(FOREGROUND):
            p, g = pred == label, target == label
            inter, size = (p & g).sum((1, 2)).double(), (p.sum((1, 2)) + g.sum((1, 2))).double()
            dice[i] = torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(size)).sum()
            if self.n_val_volumes and "volume" in batch:
                v_inter[:, i].index_add_(0, batch["volume"], inter)
                v_size[:, i].index_add_(0, batch["volume"], size)
        rows = batch["row"].cpu().numpy()
        _, valid = anatomy.evaluate_batch(pred.to("cpu", torch.uint8).numpy(), self.val_spacing[rows])
        sums = {
            "n": n,
            "dice": dice,
            "valid": torch.tensor(float(valid.sum()), dtype=torch.float64, device=x.device),
            "v_inter": v_inter,
            "v_size": v_size,
        }
        for key in ("recon", "kl", *[k for k in terms if k.startswith("kl_scale")]):
            sums[key] = terms[key].double() * n
        return sums

    def val_summary(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(sums["n"].clamp_min(1))
        out = {k: float(v) / n for k, v in sums.items() if k not in ("n", "dice", "valid", "v_inter", "v_size")}
        dice = sums["dice"] / n
        for i, name in enumerate(CLASSES):
            out[f"dice_{name}"] = float(dice[i])
        out["dice_mean"] = float(dice.mean())
        out["select"] = out["dice_mean"] if self._warm else float("-inf")
        inter, size = sums["v_inter"], sums["v_size"]
        # Only volumes with pixels in either mask carry information; absent volumes (size 0 for
        # every class) are those of other ranks' or never seen: skip them, as eval does.
        seen = size.sum(1) > 0
        if bool(seen.any()):
            vdice = torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(size))[seen]
            for i, name in enumerate(CLASSES):
                out[f"vdice_{name}"] = float(vdice[:, i].mean())
            out["vdice_mean"] = float(vdice.mean())
        out["valid_fraction"] = float(sums["valid"]) / n
        out["loss"] = out["recon"] + out["kl"]  # the (unweighted) negative ELBO per slice
        return out
