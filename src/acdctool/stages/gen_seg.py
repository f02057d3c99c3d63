"""gen-seg: segment every slice with trained nets, out-of-fold, into a ``seg`` slice file.

The imperfect masks the NVAE learns to correct must carry *real* errors, so no slice is
segmented by a net that trained on its patient (the reference report split by slice and
leaked). Checkpoints are grouped by architecture; each group becomes one output "model"
(the ``model`` index column, e.g. ``unet``):

- **fold models** (``train-seg --fold k``): a patient of fold ``f`` is segmented by the fold-``f``
  model only (it validated on that fold, never trained on it). Patients of folds with no
  model given are skipped (listed in the result). Test patients (fold -1), which no fold
  model saw, get the *average softmax of all the group's fold models* (a k-fold ensemble,
  as nnU-Net does for its test set).
- **a non-fold model** (trained on the file's train/val split) segments every patient; its
  training patients are then in-sample and the result says so.

Checkpoints must agree with the file on each shared patient's fold, else out-of-fold is not
guaranteed and the stage refuses (:class:`BadInputError`); a different file hash with an
agreeing fold map only warns (e.g. the file was re-made with the same seed). Every
prediction is also checked against the predicting model's stored training patients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.config import GenSegConfig, config_to_dict
from acdctool.conventions import N_CLASSES, resolve_device
from acdctool.errors import BadInputError, ConfigError
from acdctool.io.atomic import check_output
from acdctool.io.checkpoint import Checkpoint, file_sha256, load_checkpoint
from acdctool.io.slices import INDEX_COLUMNS, SliceFile, SliceWriter, check_values
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance

TEST_POLICY = "ensemble"  # fold -1 patients: mean softmax of every fold model of the group


@dataclass
class ModelGroup:
    """One output model name: its checkpoints by fold (key None for a non-fold model)."""

    name: str
    by_fold: dict[int | None, Checkpoint]
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # input rows it predicts
    predictors: list[tuple[int | None, ...]] = field(default_factory=list)  # per row: folds of models used
    skipped: list[str] = field(default_factory=list)  # patients without an out-of-fold model


@dataclass
class GenSegPlan:
    """What :func:`run` will do; made (and validated) by :func:`plan_gen_seg`."""

    path: Path
    groups: list[ModelGroup]
    batch_size: int
    warnings: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(g.rows) for g in self.groups)

    @property
    def n_batches(self) -> int:
        return sum(math.ceil(len(g.rows) / self.batch_size) for g in self.groups)


@dataclass(frozen=True)
class Inputs:
    """What gen-seg reads."""

    slices: Path
    """The prep file the models trained on."""
    models: tuple[Path, ...]
    """train-seg checkpoints: several architectures and/or one per fold."""
    provenance: Provenance | None = None
    """Stored in the file; None: made here, without a command line."""


@dataclass
class Result:
    """What gen-seg wrote: rows, output models, patients skipped per model, warnings."""

    output: Path
    rows: int
    models: list[str]
    skipped: dict[str, list[str]]
    warnings: list[str]


def plan_gen_seg(path: Path | str, checkpoints: Sequence[Path | str], config: GenSegConfig) -> GenSegPlan:
    """Load and cross-check the input and checkpoints; decide which model predicts which row.

    Raises:
        InputMissingError, FileKindError, SchemaVersionError, BadInputError: an unreadable
            input or checkpoint, a checkpoint that is not a ``seg-model``, two checkpoints for
            the same architecture and fold, a fold map that disagrees with the file, slices
            the net cannot take, or nothing left to predict.
    """
    from acdctool.models.seg import check_input_size

    path = Path(path)
    if not checkpoints:
        raise BadInputError("no --model checkpoint given")
    with SliceFile(path, kinds=("prep",)) as f:
        index, shape = f.index, f.shape
    sha = file_sha256(path)
    ckpts = [load_checkpoint(p, kinds=["seg-model"]) for p in checkpoints]
    warnings: list[str] = []
    first = index.drop_duplicates("patient")
    file_folds = dict(zip(first.patient, first.fold, strict=True))
    groups: dict[str, ModelGroup] = {}
    for ck in ckpts:
        check_input_size(ck.model_name, ck.model_args, shape, str(path))
        _check_folds(ck, file_folds, path)
        if ck.data.get("sha256") != sha:
            warnings.append(
                f"{ck.path}: trained on {ck.data.get('path')}, not on this file; its fold map agrees, "
                f"so predictions stay out-of-fold"
            )
        group = groups.setdefault(ck.model_name, ModelGroup(ck.model_name, {}))
        if ck.fold in group.by_fold:
            what = f"fold {ck.fold}" if ck.fold is not None else "the train/val split"
            raise BadInputError(
                f"{ck.path} and {group.by_fold[ck.fold].path}: two {ck.model_name} checkpoints for "
                f"{what}; give one per architecture and fold"
            )
        group.by_fold[ck.fold] = ck
        if None in group.by_fold and len(group.by_fold) > 1:
            raise BadInputError(f"{ck.path}: mixes fold and non-fold {ck.model_name} checkpoints")
    patients, folds = index.patient.to_numpy(), index.fold.to_numpy()
    for group in groups.values():
        _assign(group, patients, folds, warnings)
    plan = GenSegPlan(path, list(groups.values()), config.batch_size, warnings)
    if plan.rows == 0:
        raise BadInputError(f"{path}: no slice has an out-of-fold model among the checkpoints given")
    return plan


def run(
    config: GenSegConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Segment every slice out-of-fold and write the ``seg`` file (atomically).

    First :func:`plan_gen_seg` checks the input and checkpoints and decides which model predicts
    which row; then the rows are segmented batch by batch.

    Output arrays: ``image``, ``gt`` (when the input has it), ``pred`` uint8 labels, and with
    ``config.save_probs`` float16 ``probs`` (N, 4, H, W). Root attribute ``assignment`` maps
    model → patient → folds of the checkpoints that predicted it; ``checkpoints`` lists them.

    Args:
        config: batch size, device, AMP, probabilities.
        inputs: the prep file and the checkpoints (and provenance).
        output: output ``.h5`` path.
        force: replace an existing ``output``.
        progress: one event per batch (unit ``batches``).

    Raises:
        InputMissingError, FileKindError, SchemaVersionError, BadInputError: see
            :func:`plan_gen_seg`; an image with NaN/inf (naming the row).
        OutputError: ``output`` exists (without ``force``), is one of the inputs, or cannot
            be written.
        ConfigError: ``device`` is ``cuda`` without a CUDA device.

    Example:
        >>> ckpts = tuple(Path(f"runs/unet-f{k}/best.pt") for k in range(5))
        >>> run(GenSegConfig(), Inputs(Path("slices.h5"), ckpts), Path("seg.h5")).models  # doctest: +SKIP
        ['unet']
    """
    plan = plan_gen_seg(inputs.slices, inputs.models, config)
    provenance = make_provenance([inputs.slices, *inputs.models]) if inputs.provenance is None else inputs.provenance
    output = Path(output)
    check_output(output, force, [plan.path, *inputs.models])
    device = resolve_device(config.device)
    tracker = Tracker(progress, plan.n_batches, "batches")
    nets = {(g.name, fold): _load_net(ck, device) for g in plan.groups for fold, ck in g.by_fold.items()}
    with SliceFile(plan.path, kinds=("prep",)) as f:
        index, has_gt = f.index, f.has("gt")
        arrays: dict[str, tuple[str, tuple[int, ...]]] = {"image": ("float32", ()), "pred": ("uint8", ())}
        if has_gt:
            arrays = {"image": ("float32", ()), "gt": ("uint8", ()), "pred": ("uint8", ())}
        if config.save_probs:
            arrays["probs"] = ("float16", (N_CLASSES,))
        attrs = {
            "checkpoints": [_describe(ck) for g in plan.groups for ck in g.by_fold.values()],
            "assignment": {g.name: _assignment(g, index) for g in plan.groups},
            "test_policy": TEST_POLICY,
        }
        extra = {  # a stage's own columns (e.g. the sources of an nnU-Net prep) are carried along
            c: ("str" if index[c].dtype == object else str(index[c].dtype))
            for c in index.columns
            if c not in INDEX_COLUMNS
        }
        with SliceWriter(
            output,
            kind="seg",
            config=config_to_dict(config),
            provenance=provenance,
            shape=f.shape,
            arrays=arrays,
            force=force,
            attrs=attrs,
            inputs=[plan.path, *inputs.models],
            columns=extra,
        ) as writer:
            for group in plan.groups:
                for start in range(0, len(group.rows), plan.batch_size):
                    rows = group.rows[start : start + plan.batch_size]
                    who = group.predictors[start : start + plan.batch_size]
                    image = f.read("image", rows)
                    check_values(plan.path, "image", image, rows, f)  # NaN would decode as empty masks
                    probs = _predict(nets, group.name, image, who, device, config.amp and device.type == "cuda")
                    out = {"image": image, "pred": probs.argmax(1).astype(np.uint8)}
                    if has_gt:
                        out["gt"] = f.read("gt", rows)
                    if config.save_probs:
                        out["probs"] = probs.astype(np.float16)
                    writer.append(index.iloc[rows].assign(model=group.name), **out)
                    tracker.advance()
    return Result(
        output,
        plan.rows,
        [g.name for g in plan.groups],
        {g.name: g.skipped for g in plan.groups if g.skipped},
        plan.warnings,
    )


def _check_folds(ck: Checkpoint, file_folds: dict[str, int], path: Path) -> None:
    stored = ck.data.get("folds") or {}
    wrong = [p for p, f in file_folds.items() if p in stored and int(stored[p]) != int(f)]
    if wrong:
        p = wrong[0]
        raise BadInputError(
            f"{ck.path}: trained with {p} in fold {stored[p]}, but {path} puts it in fold "
            f"{file_folds[p]} ({len(wrong)} patients differ); out-of-fold predictions are not "
            f"guaranteed: use the slice file the model was trained on"
        )


def _assign(group: ModelGroup, patients: np.ndarray, folds: np.ndarray, warnings: list[str]) -> None:
    """Fill ``group.rows``/``predictors``: which input rows, predicted by which folds' models."""
    rows, who, skipped = [], [], set()
    model_folds = tuple(sorted(k for k in group.by_fold if k is not None))
    in_sample: set[str] = set()
    trained = {k: set(ck.data.get("train_patients", ())) for k, ck in group.by_fold.items()}
    for r, (patient, fold) in enumerate(zip(patients, folds, strict=False)):
        if None in group.by_fold:
            use: tuple[int | None, ...] = (None,)
        elif fold < 0:
            use = model_folds
        elif int(fold) in group.by_fold:
            use = (int(fold),)
        else:
            skipped.add(str(patient))
            continue
        for k in use:
            if patient in trained[k]:
                if k is not None:
                    raise BadInputError(f"{group.by_fold[k].path}: trained on {patient}, which it would segment")
                in_sample.add(str(patient))
        rows.append(r)
        who.append(use)
    group.rows, group.predictors, group.skipped = np.asarray(rows, np.int64), who, sorted(skipped)
    if in_sample:
        warnings.append(
            f"{group.name}: {len(in_sample)} patients were in the training set of "
            f"{group.by_fold[None].path} (in-sample masks); train with --fold for out-of-fold masks"
        )


def _load_net(ck: Checkpoint, device):
    from acdctool.models.seg import build_seg_model

    try:
        net = build_seg_model(ck.model_name, ck.model_args)
        net.load_state_dict(ck.state_dict)
    except (RuntimeError, TypeError, ValueError, KeyError, ConfigError) as exc:
        raise BadInputError(
            f"{ck.path}: weights do not fit its stored architecture ({(str(exc).strip().splitlines() or ['?'])[0]})"
        ) from None
    return net.to(device).eval()


def _predict(nets, name: str, image: np.ndarray, who: list[tuple], device, amp: bool) -> np.ndarray:
    """Softmax (n, 4, H, W) float32; each row averaged over the models listed for it."""
    import torch

    out = np.zeros((len(image), N_CLASSES, *image.shape[-2:]), np.float32)
    x_all = torch.from_numpy(np.ascontiguousarray(image))[:, None]
    for combo in sorted(set(who), key=str):
        sel = np.flatnonzero([w == combo for w in who])
        x = x_all[sel].to(device)
        acc: torch.Tensor | None = None
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for fold in combo:
                p = torch.softmax(nets[(name, fold)](x).float(), dim=1)
                acc = p if acc is None else acc + p
        assert acc is not None  # every combo names at least one fold model
        out[sel] = (acc / len(combo)).cpu().numpy()
    return out


def _describe(ck: Checkpoint) -> dict[str, Any]:
    return {
        "path": str(Path(ck.path).resolve()),
        "model": ck.model_name,
        "fold": ck.fold,
        "data_sha256": ck.data.get("sha256"),
        "epoch": ck.metrics.get("epoch"),
        "val_dice_mean": ck.metrics.get("val_dice_mean"),
    }


def _assignment(group: ModelGroup, index) -> dict[str, list]:
    out: dict[str, list] = {}
    for r, use in zip(group.rows, group.predictors, strict=False):
        out.setdefault(str(index.patient.iat[r]), list(use))
    return out
