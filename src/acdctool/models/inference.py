"""Segmenting new images with trained nets: fold ensembles, flip test-time augmentation, GT-free crops.

:class:`SegEnsemble` holds the checkpoints of one architecture (typically one per fold) and
averages their softmax over the four flips of each slice. :func:`segment_patient` crops the
frames of one patient with the rule the nets were trained with (:mod:`acdctool.data.crop_rule`),
searching for the heart with the nets themselves for ``--roi heart``: pass 1 at the image
centre, then re-centred on the predicted heart until the crop stops moving.

Example:
    >>> ens = SegEnsemble.load([Path("unet-f0/best.pt"), Path("unet-f1/best.pt")], "cpu")  # doctest: +SKIP
    >>> result = segment_patient([(image, spacing, path)], ens, PredictConfig())  # doctest: +SKIP
    >>> result.labels[0].shape  # doctest: +SKIP
    (10, 128, 128)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.config import PredictConfig, PrepConfig
from acdctool.conventions import N_CLASSES
from acdctool.data.crop_rule import CropBox, CropRule, centre_box, heart_centred_box
from acdctool.data.prep import resize_crop
from acdctool.errors import BadInputError, ConfigError, FileKindError
from acdctool.io.acdc import Frame
from acdctool.io.checkpoint import Checkpoint, file_sha256, load_checkpoint
from acdctool.io.export import uncrop

FLIPS: tuple[tuple[int, ...], ...] = ((), (-2,), (-1,), (-2, -1))
"""Test-time augmentation: no flip, flip rows, flip columns, both (axes of (B, C, H, W))."""


def load_seg_checkpoint(path: Path) -> Checkpoint:
    """A segmentation checkpoint, full (``best.pt``) or lean (``export-model``).

    Raises:
        FileKindError: a TorchScript export (made for use outside acdctool), or not a seg model.
        InputMissingError, BadInputError, SchemaVersionError: see :func:`load_checkpoint`.
    """
    from acdctool.io.model_export import is_torchscript

    if Path(path).is_file() and is_torchscript(Path(path)):
        raise FileKindError(
            f"{path}: a TorchScript export (for use outside acdctool); give the checkpoint or its lean copy"
        )
    return load_checkpoint(path, kinds=["seg-model"])


def crop_rule_of(ck: Checkpoint) -> CropRule:
    """The preprocessing a segmentation checkpoint was trained with.

    Raises:
        BadInputError: the checkpoint records none (trained before this was stored), naming
            the command that adds it.
    """
    prep = ck.data.get("prep")
    if not prep:
        raise BadInputError(
            f"{ck.path}: no record of the crop it was trained on (older checkpoint); add it with "
            f"`acdctool export-model {ck.path} --slices TRAINING.h5 -o lean.pt`"
        )
    return CropRule.from_prep_config(prep)


class SegEnsemble:
    """Checkpoints of one architecture and one preprocessing: mean softmax, optional flip TTA."""

    def __init__(self, checkpoints: list[Checkpoint], nets: list[Any], rule: CropRule, device: Any):
        self.checkpoints, self.nets, self.rule, self.device = checkpoints, nets, rule, device

    @classmethod
    def load(cls, paths: Sequence[Path], device: Any, *, gt_free: bool = True) -> SegEnsemble:
        """Load and cross-check the checkpoints.

        Args:
            paths: seg checkpoints (full or lean), one architecture.
            device: a ``torch.device`` (or its name).
            gt_free: refuse a crop rule that needs ground truth (``--roi gt``).

        Raises:
            BadInputError: no checkpoint, mixed architectures or preprocessing, a rule that
                needs ground truth, weights that do not fit their architecture (naming the file).
        """
        import torch

        from acdctool.models.seg import build_seg_model, check_input_size

        if not paths:
            raise BadInputError("no --model checkpoint given")
        device = torch.device(device)
        ckpts = [load_seg_checkpoint(Path(p)) for p in paths]
        first, rule = ckpts[0], crop_rule_of(ckpts[0])
        for ck in ckpts[1:]:
            if ck.model_name != first.model_name:
                raise BadInputError(
                    f"{ck.path}: a {ck.model_name} net, {first.path} a {first.model_name}; "
                    "an ensemble is one architecture (run predict once per architecture)"
                )
            if crop_rule_of(ck) != rule:
                raise BadInputError(
                    f"{ck.path}: trained on {crop_rule_of(ck).name}, {first.path} on {rule.name}; "
                    "an ensemble needs one preprocessing"
                )
        if gt_free and not rule.gt_free:
            raise BadInputError(
                f"{first.path}: trained on crops around the ground truth (prep --roi gt), which predict "
                "cannot place on new images; train on `prep --roi heart` (or center) crops"
            )
        nets = []
        for ck in ckpts:
            check_input_size(ck.model_name, ck.model_args, (rule.size, rule.size), str(ck.path))
            try:
                net = build_seg_model(ck.model_name, ck.model_args)
                net.load_state_dict(ck.state_dict)
            except (RuntimeError, TypeError, ValueError, KeyError, ConfigError) as exc:
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise BadInputError(f"{ck.path}: weights do not fit its stored architecture ({why})") from None
            nets.append(net.to(device).eval())
        return cls(ckpts, nets, rule, device)

    def describe(self) -> list[dict[str, Any]]:
        """Path, hash, architecture and fold of each checkpoint (stored with predictions)."""
        return [
            {
                "path": str(Path(ck.path).resolve()),
                "sha256": file_sha256(ck.path),
                "model": ck.model_name,
                "fold": ck.fold,
                "lean": ck.train is None,
                "val_dice_mean": ck.metrics.get("val_dice_mean"),
            }
            for ck in self.checkpoints
        ]

    def probs(self, images: np.ndarray, batch_size: int = 64, tta: bool = True, amp: bool = False) -> np.ndarray:
        """Mean softmax (N, 4, H, W) float32 of ``images`` (N, H, W) over nets (and flips)."""
        import torch

        out = np.zeros((len(images), N_CLASSES, *images.shape[-2:]), np.float32)
        flips = FLIPS if tta else FLIPS[:1]
        use_amp = amp and self.device.type == "cuda"
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))[:, None].to(self.device)
            acc = torch.zeros((len(x), N_CLASSES, *x.shape[-2:]), device=self.device)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                for net in self.nets:
                    for axes in flips:
                        xi = torch.flip(x, axes) if axes else x
                        p = torch.softmax(net(xi).float(), dim=1)
                        acc += torch.flip(p, axes) if axes else p
            out[start : start + len(x)] = (acc / (len(self.nets) * len(flips))).cpu().numpy()
        return out


@dataclass
class PatientSegmentation:
    """One patient's frames segmented in the crop: probabilities, labels, the crop and how it was found."""

    probs: list[np.ndarray]
    """Per frame (Z, 4, size, size) float32."""
    box: CropBox
    passes: int
    heart_found: bool
    """The final masks hold any heart (for ``--roi heart``, else the crop stayed at the centre)."""
    crop_spacing: tuple[float, float] = (0.0, 0.0)
    """(row mm, col mm) of a crop pixel."""
    labels: list[np.ndarray] = field(default_factory=list)
    """Per frame (Z, size, size) uint8."""


def segment_patient(
    frames: Sequence[tuple[np.ndarray, tuple[float, float, float], Path]],
    ensemble: SegEnsemble,
    config: PredictConfig,
) -> PatientSegmentation:
    """Segment the frames of one patient (same in-plane grid) in one shared crop.

    ``center``: one pass at the image centre. ``heart``: pass 1 at the image centre, then the
    ``roi_mm`` square is re-centred on the predicted heart (largest component of the foreground
    of every slice and frame, mapped back to the image) and the frames segmented again, until
    the crop moves by at most one pixel or ``config.passes`` passes are done.

    Args:
        frames: (image (X, Y, Z) float32, spacing (mm), path for errors) per frame.
        ensemble: the nets.
        config: TTA, passes, batch size, AMP.

    Raises:
        BadInputError: frames with different in-plane shapes.
    """
    rule = ensemble.rule
    shape = frames[0][0].shape[:2]
    for image, _, path in frames[1:]:
        if image.shape[:2] != shape:
            raise BadInputError(f"{path}: in-plane shape {image.shape[:2]} differs from {frames[0][2].name} {shape}")
    spacing = frames[0][1]
    prep = PrepConfig(
        size=rule.size,
        roi=rule.roi,
        roi_mm=rule.roi_mm,
        margin=rule.margin,
        low_percentile=rule.low_percentile,
        high_percentile=rule.high_percentile,
    )
    box = centre_box(shape, spacing, rule.roi_mm)
    passes = 0
    while True:
        crops = [resize_crop(Frame(img, None, sp, path), box, prep)[0] for img, sp, path in frames]
        stacked = ensemble.probs(np.concatenate(crops), config.batch_size, config.tta, config.amp)
        probs = np.split(stacked, np.cumsum([len(c) for c in crops])[:-1])
        passes += 1
        if rule.roi != "heart" or passes >= config.passes:
            break
        heart = np.zeros(shape, bool)
        for p in probs:
            heart |= uncrop(p.argmax(1).astype(np.uint8), box.r0, box.c0, box.size, shape).any(axis=2)
        if not heart.any():
            break
        new = heart_centred_box(heart, spacing, rule.roi_mm)
        if abs(new.r0 - box.r0) <= 1 and abs(new.c0 - box.c0) <= 1:
            break
        box = new
    scale = box.size / rule.size
    labels = [p.argmax(1).astype(np.uint8) for p in probs]
    found = any(lab.any() for lab in labels)
    return PatientSegmentation(probs, box, passes, found, (spacing[0] * scale, spacing[1] * scale), labels)
