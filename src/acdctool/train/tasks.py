"""Training tasks (what differs per model) and the ``train-seg`` stage built on them.

:class:`SegTask` plugs a MONAI segmentation net into :class:`acdctool.train.loop.Trainer`:
DiceCE loss on augmented batches, Adam, and per-volume Dice per class on validation.
:func:`train_seg` selects the rows (patient-level folds), builds the datasets and the task,
and runs the trainer. The NVAE task follows the same pattern (see :class:`~.loop.Task`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from acdctool.config import TrainSegConfig, config_to_dict
from acdctool.conventions import resolve_device
from acdctool.data.loader import Augment, SliceDataset, argmax_labels, patient_folds, select_rows
from acdctool.errors import BadInputError, ConfigError
from acdctool.io.checkpoint import file_sha256
from acdctool.io.slices import SliceFile
from acdctool.models.seg import build_seg_model, check_input_size, parse_net_args, resolve_args
from acdctool.train.loop import Hooks, LoopSettings, StepContext, Trainer, TrainResult, check_run_dir

CLASS_NAMES = ("rv", "myo", "lv")  # labels 1, 2, 3


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
        inter = torch.zeros(self.n_val_volumes, 3, dtype=torch.float64, device=gt.device)
        size = torch.zeros_like(inter)
        for i, label in enumerate((1, 2, 3)):
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
        for i, name in enumerate(CLASS_NAMES):
            out[f"dice_{name}"] = float(dice[:, i].mean())
        out["dice_mean"] = float(dice.mean())
        return out


def train_seg(
    path: Path | str,
    run_dir: Path | str,
    config: TrainSegConfig,
    *,
    resume: bool = False,
    force: bool = False,
    hooks: Hooks | None = None,
    provenance: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``config.arch`` on a prep slice file; checkpoints and metrics go to ``run_dir``.

    Args:
        path: slice file of kind ``prep`` with ground truth.
        run_dir: run folder (``best.pt``, ``last.pt``, ``metrics.csv``).
        config: see :class:`acdctool.config.TrainSegConfig`.
        resume: continue ``run_dir/last.pt`` if it exists (else start).
        force: start over in an existing run folder.
        hooks: progress callbacks (rank 0) and a stop hook.
        provenance: stored in checkpoints.

    Returns:
        :class:`acdctool.train.loop.TrainResult`.

    Raises:
        InputMissingError, FileKindError, SchemaVersionError: unreadable input.
        BadInputError: no ground truth, ``fold`` not in the file, empty train/val selection,
            slice size the net cannot take, or resuming on another file.
        ConfigError: bad net arguments, CUDA asked but absent, ``tensorboard`` not installed,
            or resuming with other settings.
        OutputError: ``run_dir`` exists (without ``resume``/``force``).
        TrainingDivergedError: non-finite loss or weights (last good checkpoint kept).

    Example:
        >>> train_seg("slices.h5", "runs/unet-f0", TrainSegConfig(arch="unet", fold=0, epochs=2))  # doctest: +SKIP
    """
    path, run_dir = Path(path), Path(run_dir)
    resolve_device(config.device)
    check_run_dir(run_dir, resume, force)
    args = resolve_args(config.arch, parse_net_args(config.net_args))
    if config.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    with SliceFile(path, kinds=("prep",)) as f:
        if not f.has("gt"):
            raise BadInputError(
                f"{path}: has no ground-truth masks; train-seg needs a prep file made from "
                f"patients with *_gt.nii.gz masks"
            )
        check_input_size(config.arch, args, f.shape, str(path))
        index = f.index
    train_rows, val_rows = select_rows(index, config.fold, str(path))
    data = {
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "fold": config.fold,
        "folds": patient_folds(index),
        "train_patients": sorted(index.patient.iloc[train_rows].unique().tolist()),
        "val_patients": sorted(index.patient.iloc[val_rows].unique().tolist()),
        "rows": {"train": int(len(train_rows)), "val": int(len(val_rows))},
    }
    train_ds = SliceDataset(path, train_rows, arrays=("image", "gt"), in_memory=config.cache)
    val_ds = SliceDataset(path, val_rows, arrays=("image", "gt"), in_memory=config.cache)
    task = SegTask(
        config.arch,
        args,
        lr=config.lr,
        weight_decay=config.weight_decay,
        lr_schedule=config.lr_schedule,
        epochs=config.epochs,
        augment=Augment() if config.augment else None,
        n_val_volumes=val_ds.n_volumes,
    )
    trainer = Trainer(
        task,
        LoopSettings.from_config(config),
        run_dir,
        config=config_to_dict(config),
        data=data,
        provenance=provenance,
        resume=resume,
        force=force,
        hooks=hooks,
    )
    return trainer.fit(train_ds, val_ds)
