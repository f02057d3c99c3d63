"""``train-seg``: train one MONAI segmentation net (optionally one fold) into a run folder.

Selects the rows (patient-level folds, :func:`acdctool.data.loader.select_rows`), builds the
datasets and :class:`acdctool.train.tasks.SegTask`, and runs the one trainer
(:class:`acdctool.train.loop.Trainer`): atomic ``best.pt``/``last.pt`` every epoch,
``metrics.csv``, exact resume, DDP under ``torchrun``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from acdctool.config import TrainSegConfig, config_to_dict
from acdctool.conventions import resolve_device
from acdctool.data.crop_rule import preprocessing_of
from acdctool.data.loader import Augment, SliceDataset, patient_folds, select_rows
from acdctool.errors import BadInputError
from acdctool.io.checkpoint import file_sha256
from acdctool.io.slices import SliceFile
from acdctool.models.seg import check_buildable, check_input_size, parse_net_args, resolve_args
from acdctool.progress import Progress
from acdctool.provenance import Provenance, make_provenance
from acdctool.stages._training import check_tensorboard, training_hooks
from acdctool.train.interface import LoopSettings, TrainResult
from acdctool.train.loop import Trainer
from acdctool.train.run_dir import check_run_dir
from acdctool.train.tasks import SegTask


@dataclass(frozen=True)
class Inputs:
    """What train-seg reads."""

    slices: Path
    """A prep slice file with ground-truth masks."""
    provenance: Provenance | None = None
    """Stored in the checkpoints; None: made here, without a command line."""


Result = TrainResult
"""How the run ended (:class:`acdctool.train.loop.TrainResult`)."""


def run(
    config: TrainSegConfig,
    inputs: Inputs,
    output: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    resume: bool = False,
    should_stop: Callable[[int, int], bool] | None = None,
) -> TrainResult:
    """Train ``config.arch`` on a prep slice file; checkpoints and metrics go to the run folder ``output``.

    Args:
        config: see :class:`acdctool.config.TrainSegConfig`.
        inputs: the slice file (and provenance).
        output: run folder (``best.pt``, ``last.pt``, ``metrics.csv``).
        force: start over in an existing run folder.
        progress: per optimiser step (phase ``epoch E/EPOCHS``, unit ``steps``), and the
            epoch's metrics record at its end (rank 0 only).
        resume: continue ``output/last.pt`` if it exists (else start).
        should_stop: ``(epoch, steps done in it) → bool``; True stops as SIGTERM would
            (``last.pt`` saved, status ``interrupted``).

    Returns:
        :class:`acdctool.train.loop.TrainResult`.

    Raises:
        InputMissingError, FileKindError, SchemaVersionError: unreadable input.
        BadInputError: no ground truth, ``fold`` not in the file, empty train/val selection,
            slice size the net cannot take, labels outside 0..3 or NaN/inf images (naming
            the row), or resuming on another file.
        ConfigError: bad net arguments (unknown, of the wrong type, or a net that cannot be
            built or run), CUDA asked but absent, ``tensorboard`` not installed, or resuming
            with other settings.
        OutputError: ``output`` exists (without ``resume``/``force``), or another process is
            training into it.
        TrainingDivergedError: non-finite loss or weights (last good checkpoint kept).

    Example:
        >>> config = TrainSegConfig(arch="unet", fold=0, epochs=2)
        >>> run(config, Inputs(Path("slices.h5")), Path("runs/unet-f0")).status  # doctest: +SKIP
        'completed'
    """
    path, run_dir = Path(inputs.slices), Path(output)
    resolve_device(config.device)
    check_run_dir(run_dir, resume, force, [path])
    args = resolve_args(config.arch, parse_net_args(config.net_args))
    check_tensorboard(config.tensorboard)
    with SliceFile(path, kinds=("prep",)) as f:
        if not f.has("gt"):
            raise BadInputError(
                f"{path}: has no ground-truth masks; train-seg needs a prep file made from "
                f"patients with *_gt.nii.gz masks"
            )
        check_input_size(config.arch, args, f.shape, str(path))
        check_buildable(config.arch, args, f.shape)
        index, prep = f.index, preprocessing_of(f.kind, f.config)
    train_rows, val_rows = select_rows(index, config.fold, str(path))
    data = {
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "fold": config.fold,
        "folds": patient_folds(index),
        "train_patients": sorted(index.patient.iloc[train_rows].unique().tolist()),
        "val_patients": sorted(index.patient.iloc[val_rows].unique().tolist()),
        "rows": {"train": int(len(train_rows)), "val": int(len(val_rows))},
        "prep": prep,  # crop rule, size, normalisation: what predict must reproduce
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
        provenance=make_provenance([path]) if inputs.provenance is None else inputs.provenance,
        resume=resume,
        force=force,
        hooks=training_hooks(progress, config.epochs, should_stop),
        inputs=(path,),
    )
    return trainer.fit(train_ds, val_ds)
