"""``train-nvae``: train the NVAE shape model on masks into a run folder.

Three modes, picked by the config (:func:`acdctool.train.nvae_task.nvae_arrays`): ``input=gt``
auto-encodes ground-truth masks, ``input=seg`` denoises gen-seg masks, ``context=3gram`` takes
a make-3gram file's previous/current/next masks. The task is
:class:`acdctool.train.nvae_task.NvaeTask`, run by the one trainer
(:class:`acdctool.train.loop.Trainer`) exactly as ``train-seg``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from acdctool.config import Context, TrainNvaeConfig, config_to_dict
from acdctool.conventions import N_CLASSES, resolve_device
from acdctool.data.crop_rule import preprocessing_of
from acdctool.data.loader import SliceDataset, patient_folds, select_rows
from acdctool.errors import BadInputError, FileKindError
from acdctool.io.checkpoint import file_sha256
from acdctool.io.slices import SliceFile
from acdctool.progress import Progress
from acdctool.provenance import Provenance, make_provenance
from acdctool.stages._training import check_tensorboard, training_hooks
from acdctool.train.interface import LoopSettings, TrainResult
from acdctool.train.loop import Trainer
from acdctool.train.nvae_task import NvaeTask, nvae_arrays
from acdctool.train.run_dir import check_run_dir


@dataclass(frozen=True)
class Inputs:
    """What train-nvae reads."""

    data: Path
    """A prep file (``input=gt``), gen-seg file (``input=seg``) or make-3gram file (``context=3gram``)."""
    provenance: Provenance | None = None
    """Stored in the checkpoints; None: made here, without a command line."""


Result = TrainResult
"""How the run ended (:class:`acdctool.train.loop.TrainResult`)."""


def run(
    config: TrainNvaeConfig,
    inputs: Inputs,
    output: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    resume: bool = False,
    should_stop: Callable[[int, int], bool] | None = None,
) -> TrainResult:
    """Train the NVAE on a slice file's masks; checkpoints and metrics go to the run folder ``output``.

    Args:
        config: see :class:`acdctool.config.TrainNvaeConfig`.
        inputs: the slice file (and provenance).
        output: run folder (``best.pt``, ``last.pt``, ``metrics.csv``).
        force, progress, resume, should_stop: as in :func:`acdctool.stages.train_seg.run`.

    Raises:
        FileKindError: ``context=3gram`` without a make-3gram file, or a make-3gram file without it.
        BadInputError: missing masks for the mode (ground truth, or ``pred`` for ``input=seg``),
            empty selection, or a slice size the model cannot take.
        ConfigError: inconsistent model configuration, CUDA asked but absent, ``tensorboard``
            not installed.
        OutputError, TrainingDivergedError: see :func:`acdctool.stages.train_seg.run`.

    Example:
        >>> config = TrainNvaeConfig(input="gt", fold=0)
        >>> run(config, Inputs(Path("slices.h5")), Path("runs/nvae-gt-f0")).best_value  # doctest: +SKIP
        0.93
    """
    from acdctool.models.nvae import NVAE

    path, run_dir = Path(inputs.data), Path(output)
    resolve_device(config.device)
    check_run_dir(run_dir, resume, force, [path])
    check_tensorboard(config.tensorboard)
    input_key, target_key = nvae_arrays(config)
    with SliceFile(path) as f:
        if config.context == Context.TRIGRAM.value and f.kind != "3gram":
            raise FileKindError(f"{path}: a '{f.kind}' file; --context 3gram needs a make-3gram output")
        if config.context != Context.TRIGRAM.value and f.kind == "3gram":
            raise FileKindError(f"{path}: a make-3gram file; train it with --context 3gram")
        for key in dict.fromkeys((input_key, target_key)):
            if not f.has(key):
                what = {
                    "gt": "ground-truth masks",
                    "pred": "segmentations ('pred': a gen-seg output)",
                    "context": "3-gram context",
                }[key]
                raise BadInputError(
                    f"{path}: has no {what}, needed by --input {config.input} --context {config.context}"
                )
        index, shape, spacing = f.index, f.shape, f.spacing()
        prep = preprocessing_of(f.kind, f.config)
    model_args = {
        "in_channels": 3 * N_CLASSES if config.context == Context.TRIGRAM.value else N_CLASSES,
        "out_channels": N_CLASSES,
        "image_size": shape[0],
        "stem_channels": config.stem_channels,
        "scales": config.scales,
        "groups_per_scale": list(config.groups_per_scale),
        "latent_channels": config.latent_channels,
        "se_reduction": config.se_reduction,
    }
    NVAE.from_args(model_args)  # validates sizes before any file is written
    if shape[0] != shape[1]:
        raise BadInputError(f"{path}: slices are {shape[0]}×{shape[1]}; the NVAE needs square slices")
    train_rows, val_rows = select_rows(index, config.fold, str(path))
    arrays = tuple(dict.fromkeys((input_key, target_key)))
    train_ds = SliceDataset(path, train_rows, arrays=arrays, labels=("gt", "pred", "context"), in_memory=config.cache)
    val_ds = SliceDataset(path, val_rows, arrays=arrays, labels=("gt", "pred", "context"), in_memory=config.cache)
    data = {
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "kind": "nvae",
        "input": config.input,
        "context": config.context,
        "fold": config.fold,
        "folds": patient_folds(index),
        # refine refuses to correct a patient with an NVAE that trained on it
        "train_patients": sorted(index.patient.iloc[train_rows].unique().tolist()),
        "val_patients": sorted(index.patient.iloc[val_rows].unique().tolist()),
        "rows": {"train": int(len(train_rows)), "val": int(len(val_rows))},
        "prep": prep,  # the crop the masks were made with (None unless a prep file)
    }
    steps = max(1, len(train_ds) // config.batch_size)
    task = NvaeTask(model_args, config, steps, spacing, n_val_volumes=val_ds.n_volumes)
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
