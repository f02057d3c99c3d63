"""The segmentation training task (what differs per model), run by the ``train-seg`` stage.

:class:`SegTask` plugs a MONAI segmentation net into :class:`acdctool.train.loop.Trainer`:
DiceCE loss on augmented batches, Adam, and per-volume Dice per class on validation.
:mod:`acdctool.stages.train_seg` selects the rows (patient-level folds), builds the datasets and
the task, and runs the trainer. The NVAE task follows the same pattern (see :class:`~.loop.Task`).
"""

from __future__ import annotations

from typing import Any

import torch

from acdctool.conventions import CLASSES, FOREGROUND
from acdctool.data.loader import Augment, argmax_labels
from acdctool.models.seg import build_seg_model
from acdctool.train.interface import StepContext


class SegTask:
    """Segmentation: image (B, 1, H, W) → logits (B, 4, H, W), DiceCE against ``gt`` labels.

    Validation reports, per class, the Dice of each *volume* (patient × phase, 3D overlap of
    its slices) averaged over volumes, with Dice 1 when both masks are empty (ACDC convention),
    plus the validation loss; ``val_dice_mean`` (mean of RV, MYO, LV) picks ``best.pt``.

    Args:
        arch, model_args: see :func:`acdctool.models.seg.build_seg_model`.
        lr, weight_decay: Adam settings.
        lr_schedule: ``constant`` or ``cosine`` (over ``epochs``, stepped per epoch).
        epochs: total epochs (cosine length).
        augment: batch augmentation, or None.
        n_val_volumes: number of volumes in the validation dataset (its ``n_volumes``).
    """

    checkpoint_kind = "seg-model"
    best_metric = "val_dice_mean"
    best_mode = "max"
    scheduler_interval = "epoch"

    def __init__(
        self,
        arch: str,
        model_args: dict[str, Any],
        *,
        lr: float,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        epochs: int = 1,
        augment: Augment | None = None,
        n_val_volumes: int = 1,
    ) -> None:
        from monai.losses import DiceCELoss

        self.model_name, self.model_args = arch, dict(model_args)
        self.lr, self.weight_decay, self.lr_schedule, self.epochs = lr, weight_decay, lr_schedule, epochs
        self.augment, self.n_val_volumes = augment, n_val_volumes
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def build_model(self) -> torch.nn.Module:
        return build_seg_model(self.model_name, self.model_args)

    def configure_optimizer(self, model: torch.nn.Module):
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "cosine":
            return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)

    def train_step(self, model, batch: dict[str, torch.Tensor], ctx: StepContext):
        if self.augment is not None:
            batch = self.augment(batch, ctx.generator)
        logits = model(batch["image"])
        loss = self.loss(logits.float(), batch["gt"][:, None])
        return loss, {}

    def val_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(batch["image"]).float()
        gt, n = batch["gt"], batch["gt"].shape[0]
        loss = self.loss(logits, gt[:, None])
        pred = argmax_labels(logits)
        vol = batch["volume"]
        inter = torch.zeros(self.n_val_volumes, len(FOREGROUND), dtype=torch.float64, device=gt.device)
        size = torch.zeros_like(inter)
        for i, label in enumerate(FOREGROUND):
            p, g = pred == label, gt == label
            inter[:, i].index_add_(0, vol, (p & g).sum((1, 2)).double())
            size[:, i].index_add_(0, vol, (p.sum((1, 2)) + g.sum((1, 2))).double())
        return {
            "loss_sum": loss.double() * n,
            "n": torch.tensor(float(n), dtype=torch.float64, device=gt.device),
            "inter": inter,
            "size": size,
        }

    def val_summary(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        inter, size = sums["inter"], sums["size"]
        # Both empty → Dice 1 (ACDC); only volumes actually present in the sums count.
        dice = torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(size))
        out = {"loss": float(sums["loss_sum"] / sums["n"].clamp_min(1))}
        for i, name in enumerate(CLASSES):
            out[f"dice_{name}"] = float(dice[:, i].mean())
        out["dice_mean"] = float(dice.mean())
        return out
