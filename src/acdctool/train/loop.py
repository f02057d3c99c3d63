"""The one trainer: device, bf16 autocast, DDP, checkpoints, exact resume, metrics, SIGTERM.

What differs between models lives in a *task* object (:class:`~acdctool.train.interface.Task`;
the trainer's interface types live in :mod:`acdctool.train.interface` and are importable from
here too): it builds the net, turns a batch into a loss, and validation batches into metrics.
:class:`Trainer` owns everything else, so ``train-seg`` and ``train-nvae`` share one loop and
one behaviour:

- **Run folder** ``RUN_DIR`` (:mod:`acdctool.train.run_dir`): ``last.pt`` (every epoch, and on
  SIGTERM/SIGINT/SIGHUP mid-epoch), ``best.pt`` (best value of ``task.best_metric``),
  ``metrics.csv`` (one row per epoch, rewritten atomically from the history stored in
  ``last.pt``), ``tb/`` with ``--tensorboard``. An existing non-empty folder needs ``resume``
  (continue) or ``force`` (start over: the previous run is kept until the new one saves its
  first ``last.pt``, and put back if it fails before). A lock refuses a second process.
- **Resume** (:mod:`acdctool.train.state`) restores model, optimiser, scheduler, task state,
  the Python, NumPy, torch (and CUDA) RNG states and the augmentation generator of every rank,
  the epoch and the step inside it; the epoch order is a function of (seed, epoch), and the
  data loaders draw their seeds from their own generators (seeded by seed, epoch and rank),
  never from the global RNG. A resumed CPU run is bit-identical to an uninterrupted one.
  Resuming with another ``epochs`` stretches the learning-rate schedule to the new length
  (:func:`acdctool.train.state.continue_schedule`). ``resume`` without a checkpoint starts
  fresh, so a preempted SLURM job just reruns the same command.
- **Stop** (SIGTERM, SIGINT, SIGHUP or ``Hooks.should_stop``): ranks agree at the next check
  step, ``last.pt`` is saved, :meth:`Trainer.fit` returns ``status="interrupted"``.
- **Weight average** (``ema`` > 0, :mod:`acdctool.train.average`): validation and ``best.pt``
  use an exponential moving average of the weights; ``last.pt`` keeps the live ones and the
  average, for an exact resume.
- **Divergence**: a non-finite loss, weight or validation metric raises
  :class:`TrainingDivergedError` before anything is saved, so the last good checkpoint stays.
- **DDP** under ``torchrun``: :class:`EpochSampler` shards, rank 0 writes, validation sums are
  all-reduced. ``batch_size`` is per process.
- **Mixed precision** is bf16 autocast on CUDA (``amp``), which needs no loss scaling.
- **Garbage collection**: after the first training step (model, optimiser and any compiled
  graphs built) the objects alive are moved out of the collector's sight (``gc.freeze``)
  until :meth:`Trainer.fit` returns. Python's full collections otherwise re-scan them all
  (half a million once ``torch.compile`` has run: 0.3 s every ~20 steps, 3–4 % of a compiled
  CPU NVAE step); objects made later are collected as usual.
"""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from acdctool.errors import BadInputError, ConfigError, TrainingDivergedError
from acdctool.io.checkpoint import load_checkpoint, save_checkpoint
from acdctool.train import dist
from acdctool.train.average import WeightAverage
from acdctool.train.dist import DistContext, EpochSampler
from acdctool.train.interface import Hooks, LoopSettings, StepContext, Task, TrainResult
from acdctool.train.run_dir import RunFolder, check_run_dir, prepare_run_dir, write_metrics_csv
from acdctool.train.state import (
    RESUMABLE,
    RunState,
    check_resumable,
    continue_schedule,
    restore,
    schedule_lengths,
    train_entry,
)
from acdctool.workers import quiet_worker

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "CHECK_EVERY",
    "RESUMABLE",
    "Hooks",
    "LoopSettings",
    "StepContext",
    "Task",
    "TrainResult",
    "Trainer",
    "check_run_dir",
]

CHECK_EVERY = 10
"""Steps between the cross-rank checks for a stop request and a non-finite loss (each check
costs one tiny all-reduce and one host sync)."""

Batch = dict[str, torch.Tensor]


class Trainer:
    """Train ``task``'s model on datasets of batches (see :class:`acdctool.data.loader.SliceDataset`).

    Args:
        task: see :class:`Task`.
        settings: epochs, batch size, seed, device, AMP, workers, grad clip, tensorboard.
        run_dir: the run folder.
        config: resolved stage config (``config_to_dict``), stored and checked on resume.
        data: training-data record for checkpoints (must hold ``sha256``; see io/checkpoint).
        provenance: stored in checkpoints.
        resume: continue from ``run_dir/last.pt`` when it exists.
        force: start over in an existing run folder (its checkpoints and metrics are replaced
            once the new run has saved its first ``last.pt``).
        hooks: progress callbacks and a stop hook.
        inputs: the files the run reads; no run file may be one of them.

    Raises (from :meth:`fit`):
        OutputError: ``run_dir`` is not empty and neither ``resume`` nor ``force`` was given,
            another process is using it, or a run file would replace an input.
        ConfigError: resuming with different settings, or too few validation rows for DDP.
        BadInputError: resuming on a different data file.
        TrainingDivergedError: a non-finite loss, weight or validation metric; nothing is
            saved for that epoch.

    Example:
        >>> result = Trainer(SegTask(...), LoopSettings.from_config(cfg), Path("run"),
        ...                  config=config_to_dict(cfg), data={"sha256": h}).fit(train_ds, val_ds)  # doctest: +SKIP
    """

    def __init__(
        self,
        task: Task,
        settings: LoopSettings,
        run_dir: Path,
        *,
        config: Mapping[str, Any],
        data: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
        resume: bool = False,
        force: bool = False,
        hooks: Hooks | None = None,
        inputs: tuple[Path | str, ...] = (),
    ) -> None:
        self.task, self.settings, self.run_dir = task, settings, Path(run_dir)
        self.config, self.data, self.provenance = dict(config), dict(data), dict(provenance or {})
        self.resume, self.force, self.hooks = resume, force, hooks or Hooks()
        self.inputs = tuple(inputs)
        self._signals: dist.StopSignals | None = None
        self._folder: RunFolder | None = None  # rank 0: the locked run folder
        self._gc_seen = self._gc_frozen = False

    # ---------------------------------------------------------------- public
    def fit(self, train_ds: Dataset[Any], val_ds: Dataset[Any]) -> TrainResult:
        with dist.distributed(self.settings.device) as ctx, dist.StopSignals() as signals:
            self._signals = signals
            if _len(val_ds) < ctx.world_size:
                raise ConfigError(f"{_len(val_ds)} validation rows for {ctx.world_size} processes")
            resume_path = dist.on_main(ctx, self._prepare_run_dir)
            try:
                result = self._fit(ctx, train_ds, val_ds, resume_path)
                dist.barrier(ctx)  # rank 0 may still be writing; nobody leaves before it is done
            except BaseException:
                if self._folder is not None:
                    self._folder.rollback()  # before its first checkpoint: the folder as it was
                raise
            finally:
                if self._folder is not None:
                    self._folder.release()
                    self._folder = None
            return result

    # ------------------------------------------------------------- internals
    def _start(self, ctx: DistContext) -> RunState:
        """Seeded model, optimiser, scheduler and augmentation generator of a fresh run."""
        seed = self.settings.seed
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)  # same initial weights on every rank
        model = self.task.build_model().to(ctx.device)
        optimizer, scheduler = self.task.configure_optimizer(model)
        generator = torch.Generator().manual_seed(seed * 1009 + ctx.rank)
        run = RunState(ctx, model, optimizer, scheduler, generator)
        if self.settings.ema > 0:
            run.average = WeightAverage(model, self.settings.ema)
        return run

    def _fit(
        self, ctx: DistContext, train_ds: Dataset[Any], val_ds: Dataset[Any], resume_path: Path | None
    ) -> TrainResult:
        s, device = self.settings, ctx.device
        run = self._start(ctx)
        notes = list(self._folder.notes) if self._folder is not None else []
        notes += self._restore(run, resume_path) if resume_path is not None else []
        resumed_from = run.epoch if resume_path is not None else None
        if run.epoch >= s.epochs:
            return self._result("up-to-date", run, resumed_from, notes)
        if ctx.is_distributed:
            run.net = torch.nn.parallel.DistributedDataParallel(
                run.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        writer = self._tensorboard(run)
        try:
            while run.epoch < s.epochs:
                t0 = time.perf_counter()
                stopped = self._train_epoch(run, train_ds)
                self._check_finite(run)
                if stopped:
                    self._save(run, best=False)
                    return self._result("interrupted", run, resumed_from, notes)
                record = self._end_epoch(run, val_ds, time.perf_counter() - t0)
                self._check_validation(record)
                if self.task.scheduler_interval == "epoch":
                    run.scheduler.step()
                improved = self._update_best(run, record)
                if improved:
                    self._save(run, best=True)
                self._save(run, best=False)
                if ctx.is_main:
                    write_metrics_csv(self.run_dir, run.history)
                    if writer is not None:
                        for key, value in record.items():
                            if isinstance(value, (int, float)) and key != "epoch":
                                writer.add_scalar(key, value, record["epoch"])
                        writer.flush()
                    if self.hooks.on_epoch:
                        self.hooks.on_epoch(dict(record, best=improved))
                if run.epoch < s.epochs and self._agree_stop(run):
                    return self._result("interrupted", run, resumed_from, notes)  # last.pt is this epoch's
        finally:
            if writer is not None:
                writer.close()
            if self._gc_frozen:
                gc.unfreeze()
            self._gc_seen = self._gc_frozen = False
        return self._result("completed", run, resumed_from, notes)

    def _train_epoch(self, run: RunState, train_ds: Dataset[Any]) -> bool:
        """Run (the rest of) one epoch; True when stopped by a signal or the stop hook."""
        s, ctx, device = self.settings, run.ctx, run.ctx.device
        sampler = EpochSampler(_len(train_ds), seed=s.seed, epoch=run.epoch, rank=ctx.rank, world=ctx.world_size)
        # drop_last keeps batch norm away from a 1-sample batch and gives every rank equal steps.
        drop_last = len(sampler.share) >= s.batch_size
        n_steps = len(sampler.share) // s.batch_size if drop_last else 1
        sampler.indices = sampler.share[run.step * s.batch_size :]
        loader = DataLoader(
            train_ds,
            batch_size=s.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=s.workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            generator=self._loader_generator(run, "train"),
            worker_init_fn=quiet_worker if s.workers else None,
        )
        sums = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in run.partial.items()}
        run.net.train()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp and device.type == "cuda")
        note = self.hooks.on_note if ctx.is_main else None
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            step_ctx = StepContext(run.epoch, run.step, run.global_step, n_steps, run.generator, device, note)
            with autocast:
                loss, metrics = self.task.train_step(run.net, batch, step_ctx)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), s.grad_clip)
            run.optimizer.step()
            if run.average is not None:
                run.average.update()
            if self.task.scheduler_interval == "step":
                run.scheduler.step()
            n = next(iter(batch.values())).shape[0]
            for key, value in {"loss": loss.detach(), **metrics}.items():
                sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64, device=device)) + value.double() * n
            sums["_n"] = sums.get("_n", torch.zeros((), dtype=torch.float64, device=device)) + n
            run.step, run.global_step = run.step + 1, run.global_step + 1
            self._freeze_gc()
            if ctx.is_main and self.hooks.on_step:
                self.hooks.on_step(run.epoch, run.step, n_steps)
            stop_here = self._stop_requested(run)
            if run.step % CHECK_EVERY == 0 or run.step >= n_steps or (stop_here and not ctx.is_distributed):
                flags = torch.tensor([float(stop_here), float(not torch.isfinite(sums["loss"]).item())], device=device)
                dist.all_reduce_sum(ctx, flags)
                run.partial = {k: float(v) for k, v in sums.items()}
                if flags[1] > 0:
                    raise TrainingDivergedError(self._diverged_message(run, f"loss is {sums['loss'].item()}"))
                if flags[0] > 0 and run.step < n_steps:
                    return True
        run.partial = {k: float(v) for k, v in sums.items()}
        return False

    def _freeze_gc(self) -> None:
        """Once per run, after its first step: hide the objects alive from the collector (module
        docstring), unless the process already manages frozen objects of its own."""
        if not self._gc_seen:
            self._gc_seen = True
            if gc.get_freeze_count() == 0:
                gc.collect()
                gc.freeze()
                self._gc_frozen = True

    def _end_epoch(self, run: RunState, val_ds: Dataset[Any], seconds: float) -> dict[str, Any]:
        """Close the epoch: mean training metrics over every process, validation, history record."""
        keys = sorted(run.partial)
        totals = torch.tensor([run.partial[k] for k in keys], dtype=torch.float64, device=run.ctx.device)
        dist.all_reduce_sum(run.ctx, totals)  # per-rank sums → epoch means over every process
        n = max(float(totals[keys.index("_n")]), 1.0) if "_n" in keys else 1.0
        train = {f"train_{k}": float(totals[i]) / n for i, k in enumerate(keys) if k != "_n"}
        run.partial = {}
        with _averaged(run):
            val = self._validate(run, val_ds)
        run.epoch, run.step = run.epoch + 1, 0
        record = {
            "epoch": run.epoch,
            **train,
            **val,
            "lr": float(run.optimizer.param_groups[0]["lr"]),
            "time_s": round(seconds, 3),
        }
        run.history.append(record)
        return record

    @torch.no_grad()
    def _validate(self, run: RunState, val_ds: Dataset[Any]) -> dict[str, float]:
        """Validation on the unwrapped model (no DDP syncs), rows split across ranks without padding."""
        ctx, s = run.ctx, self.settings
        device = ctx.device
        positions = list(range(ctx.rank, _len(val_ds), ctx.world_size))
        loader = DataLoader(
            val_ds,
            batch_size=2 * s.batch_size,
            sampler=positions,
            num_workers=s.workers,
            collate_fn=_collate,
            generator=self._loader_generator(run, "val"),
            worker_init_fn=quiet_worker if s.workers else None,
        )
        run.model.eval()
        sums: dict[str, torch.Tensor] = {}
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp and device.type == "cuda")
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = self.task.val_step(run.model, batch)
            for key, value in out.items():
                sums[key] = sums[key] + value.double() if key in sums else value.double()
        for key in sorted(sums):
            dist.all_reduce_sum(ctx, sums[key])
        return {f"val_{k}" if not k.startswith("val_") else k: float(v) for k, v in self.task.val_summary(sums).items()}

    def _update_best(self, run: RunState, record: dict[str, Any]) -> bool:
        key = self.task.best_metric
        value = record.get(key, record.get(f"val_{key}"))
        if value is None or not np.isfinite(value):
            return False
        better = run.best_value is None or (
            value > run.best_value if self.task.best_mode == "max" else value < run.best_value
        )
        if better:
            run.best_value, run.best_epoch = float(value), run.epoch
        return better

    def _loader_generator(self, run: RunState, part: str) -> torch.Generator:
        """The generator a DataLoader draws its workers' base seed from, a function of (seed,
        epoch, rank): starting an iterator then never draws from the global RNG, whose state a
        mid-epoch resume restores (the NVAE's latents and dropout come from it)."""
        offset = 0 if part == "train" else 1
        return torch.Generator().manual_seed(
            (self.settings.seed * 1_000_003 + run.epoch) * 4099 + 2 * run.ctx.rank + offset
        )

    def _check_validation(self, record: dict[str, Any]) -> None:
        # NaN (or +inf: a blown-up loss) anywhere in validation; -inf is a task's "not eligible yet".
        bad = {
            k: v
            for k, v in record.items()
            if k.startswith("val_") and isinstance(v, float) and (math.isnan(v) or v == math.inf)
        }
        if bad:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            kept = self.run_dir / "last.pt"
            raise TrainingDivergedError(
                f"validation of epoch {record['epoch']} gave non-finite {shown}; "
                + (f"last good checkpoint kept: {kept}" if kept.exists() else "no checkpoint was written")
                + " (check the input for NaN/inf, or lower the learning rate)"
            )

    def _check_finite(self, run: RunState) -> None:
        if not all(torch.isfinite(p).all() for p in run.model.parameters()):
            raise TrainingDivergedError(self._diverged_message(run, "weights became non-finite"))

    def _diverged_message(self, run: RunState, what: str) -> str:
        kept = (
            f"last good checkpoint kept: {self.run_dir / 'last.pt'}"
            if (self.run_dir / "last.pt").exists()
            else "no checkpoint was written"
        )
        return (
            f"training diverged at epoch {run.epoch + 1}, step {run.step}: {what}; {kept} "
            f"(check the input for NaN/inf, or lower the learning rate)"
        )

    # ----------------------------------------------------- state and files
    def _stop_requested(self, run: RunState) -> bool:
        hook = self.hooks.should_stop
        received = self._signals is not None and self._signals.received is not None
        return received or bool(hook and hook(run.epoch, run.step))

    def _agree_stop(self, run: RunState) -> bool:
        flag = torch.tensor([float(self._stop_requested(run))], device=run.ctx.device)
        return bool(dist.all_reduce_sum(run.ctx, flag)[0] > 0)

    def _save(self, run: RunState, *, best: bool) -> None:
        task_state = self.task.state_dict() if hasattr(self.task, "state_dict") else None
        train = train_entry(run, task_state)  # every rank takes part (RNG states are gathered)
        if train is None:
            return
        averaged = best and run.average is not None  # best.pt holds --ema's average
        with _averaged(run) if averaged else nullcontext():
            state = run.model.state_dict()
            state_dict = {k: v.clone() for k, v in state.items()} if averaged else state
        save_checkpoint(
            self.run_dir / ("best.pt" if best else "last.pt"),
            kind=self.task.checkpoint_kind,
            model_name=self.task.model_name,
            model_args=self.task.model_args,
            state_dict=state_dict,
            config=self.config,
            data=self.data,
            metrics=dict(run.history[-1]) if run.history else {},
            train=train,
            provenance=self.provenance,
        )
        if not best and self._folder is not None:
            self._folder.commit()  # a good last.pt exists: the previous run (if forced) may go

    def _restore(self, run: RunState, path: Path) -> list[str]:
        """Continue from the checkpoint at ``path``; returns notes for the user."""
        ckpt = load_checkpoint(path, kinds=[self.task.checkpoint_kind])
        train = check_resumable(path, ckpt, self.config, self.data)
        try:
            run.model.load_state_dict(ckpt.state_dict)
        except RuntimeError as exc:
            raise BadInputError(f"{path}: weights do not fit this model ({str(exc).splitlines()[0]})") from None
        lengths = schedule_lengths(run.scheduler)  # the schedule built for this run's --epochs
        notes = restore(run, train, self.settings.seed)
        if hasattr(self.task, "load_state_dict") and train.get("task") is not None:
            self.task.load_state_dict(train["task"])
        old, new = ckpt.config.get("epochs"), self.config.get("epochs")
        if old is not None and new is not None and old != new and run.epoch < new:
            lr = continue_schedule(run, lengths)
            if lr is not None:
                notes.append(
                    f"--epochs {new} (was {old}): the learning-rate schedule now spans {new} epochs and "
                    f"continues at lr {lr:.4g}, where a {new}-epoch run is at this step"
                )
        return notes

    def _prepare_run_dir(self) -> Path | None:
        """Lock and prepare the run folder (rank 0); the checkpoint to resume from, or None."""
        self._folder = prepare_run_dir(self.run_dir, self.resume, self.force, self.inputs)
        return self._folder.resume_from

    def _tensorboard(self, run: RunState) -> SummaryWriter | None:
        if not (self.settings.tensorboard and run.ctx.is_main):
            return None
        from torch.utils.tensorboard import SummaryWriter  # checked importable by the stage

        return SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=run.epoch + 1)

    def _result(self, status: str, run: RunState, resumed_from: int | None, notes: list[str]) -> TrainResult:
        return TrainResult(
            self.run_dir,
            status,
            run.epoch,
            run.step,
            run.best_epoch,
            run.best_value,
            dict(run.history[-1]) if run.history else {},
            resumed_from,
            notes,
            self._signals.received if self._signals is not None and status == "interrupted" else None,
        )


def _len(dataset: Dataset[Any]) -> int:
    return len(dataset)  # type: ignore[arg-type]  # map-style datasets are sized


def _averaged(run: RunState) -> AbstractContextManager[None]:
    """The model with ``--ema``'s averaged weights swapped in, or as it is."""
    return run.average.applied() if run.average is not None else nullcontext()


def _collate(batch: Any) -> Any:
    return batch  # SliceDataset.__getitems__ returns collated batches
