"""The one trainer: device, bf16 autocast, DDP, checkpoints, exact resume, metrics, SIGTERM.

What differs between models lives in a *task* object (:class:`Task`): it builds the net,
turns a batch into a loss, and validation batches into metrics. :class:`Trainer` owns
everything else, so ``train-seg`` and ``train-nvae`` share one loop and one behaviour:

- **Run folder** ``RUN_DIR``: ``last.pt`` (every epoch, and on SIGTERM/SIGINT mid-epoch),
  ``best.pt`` (best value of ``task.best_metric``), ``metrics.csv`` (one row per epoch,
  rewritten atomically from the history stored in ``last.pt``), ``tb/`` with ``--tensorboard``.
  An existing non-empty folder needs ``resume`` (continue) or ``force`` (start over).
- **Resume** restores model, optimiser, scheduler, grad scaler, task state, the Python, NumPy,
  torch (and CUDA) RNG states and the augmentation generator of every rank, the epoch and the
  step inside it; the epoch order is a function of (seed, epoch). A resumed CPU run is
  bit-identical to an uninterrupted one. ``resume`` without a checkpoint starts fresh, so a
  preempted SLURM job just reruns the same command.
- **Stop** (SIGTERM, SIGINT or ``Hooks.should_stop``): ranks agree at the next check step,
  ``last.pt`` is saved, :meth:`Trainer.fit` returns ``status="interrupted"``.
- **Divergence**: a non-finite loss or weight raises :class:`TrainingDivergedError` before
  anything is saved, so the last good checkpoint stays.
- **DDP** under ``torchrun``: :class:`EpochSampler` shards, rank 0 writes, validation sums are
  all-reduced. ``batch_size`` is per process.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from acdctool.errors import BadInputError, ConfigError, OutputError, TrainingDivergedError
from acdctool.io.atomic import atomic_path
from acdctool.io.checkpoint import load_checkpoint, save_checkpoint
from acdctool.train import dist
from acdctool.train.dist import DistContext, EpochSampler

CHECK_EVERY = 10
"""Steps between the cross-rank checks for a stop request and a non-finite loss (each check
costs one tiny all-reduce and one host sync)."""
RESUMABLE = ("epochs", "device", "workers", "tensorboard", "cache", "amp")
"""Config fields that may change on ``--resume``; any other difference is refused."""
_RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "tb")


def check_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Fail early (before loading data) when ``run_dir`` may not be used.

    An empty existing folder is fine (e.g. made by a SLURM script for its logs).

    Raises:
        OutputError: ``run_dir`` is a file, or a non-empty folder without ``resume``/``force``.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (resume or force):
        raise OutputError(f"{run_dir}: run folder exists (use --resume to continue it or --force to start over)")


class Task(Protocol):
    """What a model contributes to :class:`Trainer` (see :class:`acdctool.train.tasks.SegTask`).

    Attributes:
        checkpoint_kind: ``seg-model`` or ``nvae-model`` (:mod:`acdctool.io.checkpoint`).
        model_name, model_args: stored in checkpoints; the model is rebuilt from them.
        best_metric: key of :meth:`val_summary`'s dict that picks ``best.pt``.
        best_mode: ``max`` or ``min``.
        scheduler_interval: ``epoch`` or ``step``: when the trainer calls ``scheduler.step()``.

    Optional: ``state_dict()`` / ``load_state_dict(state)`` for task-side state that must
    survive a resume (e.g. running statistics of a loss).
    """

    checkpoint_kind: str
    model_name: str
    model_args: dict[str, Any]
    best_metric: str
    best_mode: str
    scheduler_interval: str

    def build_model(self) -> torch.nn.Module: ...

    def configure_optimizer(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """Return (optimiser, scheduler); the scheduler needs ``step()`` and ``state_dict()``."""

    def train_step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Batch (on device) → (scalar loss to backpropagate, detached scalar metrics to average)."""

    def val_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch → tensors of *sums* (fixed shapes), added over batches and ranks."""

    def val_summary(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Summed validation tensors → metrics (must include ``best_metric``)."""


@dataclass(frozen=True)
class StepContext:
    """Where a training step is: given to :meth:`Task.train_step` (KL warm-up needs ``global_step``)."""

    epoch: int  # 0-based
    step: int  # 0-based within the epoch
    global_step: int
    steps_per_epoch: int
    generator: torch.Generator  # seeded augmentation generator (CPU), part of the resume state
    device: torch.device


@dataclass(frozen=True)
class LoopSettings:
    """The stage-config fields the loop reads (built with :meth:`from_config`)."""

    epochs: int
    batch_size: int
    seed: int
    device: str
    amp: bool
    workers: int
    grad_clip: float
    tensorboard: bool

    @classmethod
    def from_config(cls, config: Any) -> LoopSettings:
        return cls(
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            device=config.device,
            amp=config.amp,
            workers=config.workers,
            grad_clip=getattr(config, "grad_clip", 0.0),
            tensorboard=getattr(config, "tensorboard", False),
        )


@dataclass
class Hooks:
    """Callbacks, all called on rank 0 only except ``should_stop`` (called on every rank)."""

    on_epoch: Callable[[dict[str, Any]], None] | None = None  # the epoch's metrics record
    on_step: Callable[[int, int, int], None] | None = None  # (epoch, step, steps_per_epoch)
    # (epoch, steps done in it) → stop as if SIGTERM; (e, 0) is asked before epoch e starts.
    should_stop: Callable[[int, int], bool] | None = None


@dataclass
class TrainResult:
    """status: ``completed``, ``interrupted`` (``last.pt`` saved, rerun with resume) or
    ``up-to-date`` (resumed a run that had already reached ``epochs``)."""

    run_dir: Path
    status: str
    epoch: int  # completed epochs
    step: int  # steps done in the next epoch (non-zero only when interrupted)
    best_epoch: int | None
    best_value: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None  # epoch of the checkpoint resumed from
    notes: list[str] = field(default_factory=list)


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    partial: dict[str, float] = field(default_factory=dict)


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
        force: start over in an existing run folder (removes its checkpoints and metrics).
        hooks: progress callbacks and a stop hook.

    Raises (from :meth:`fit`):
        OutputError: ``run_dir`` is not empty and neither ``resume`` nor ``force`` was given.
        ConfigError: resuming with different settings, or too few validation rows for DDP.
        BadInputError: resuming on a different data file.
        TrainingDivergedError: a non-finite loss or weight; nothing is saved for that epoch.

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
    ) -> None:
        self.task, self.settings, self.run_dir = task, settings, Path(run_dir)
        self.config, self.data, self.provenance = dict(config), dict(data), dict(provenance or {})
        self.resume, self.force, self.hooks = resume, force, hooks or Hooks()
        self._signals: dist.StopSignals | None = None

    # ---------------------------------------------------------------- public
    def fit(self, train_ds: torch.utils.data.Dataset, val_ds: torch.utils.data.Dataset) -> TrainResult:
        with dist.distributed(self.settings.device) as ctx, dist.StopSignals() as signals:
            self._signals = signals
            if len(val_ds) < ctx.world_size:
                raise ConfigError(f"{len(val_ds)} validation rows for {ctx.world_size} processes")
            resume_path, created = dist.on_main(ctx, self._prepare_run_dir)
            try:
                result = self._fit(ctx, train_ds, val_ds, resume_path)
            except BaseException:
                if created and ctx.is_main and not (self.run_dir / "last.pt").exists():
                    shutil.rmtree(self.run_dir, ignore_errors=True)  # we made it; leave nothing behind
                raise
            dist.barrier(ctx)  # rank 0 may still be writing; nobody leaves before it is done
            return result

    # ------------------------------------------------------------- internals
    def _fit(self, ctx: DistContext, train_ds, val_ds, resume_path: Path | None) -> TrainResult:
        s, device = self.settings, ctx.device
        random.seed(s.seed)
        np.random.seed(s.seed % 2**32)
        torch.manual_seed(s.seed)  # same initial weights on every rank
        model = self.task.build_model().to(device)
        optimizer, scheduler = self.task.configure_optimizer(model)
        scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling
        generator = torch.Generator().manual_seed(s.seed * 1009 + ctx.rank)
        state, notes = _State(), []
        if resume_path is not None:
            notes += self._restore(ctx, resume_path, model, optimizer, scheduler, scaler, generator, state)
        resumed_from = state.epoch if resume_path is not None else None
        if state.epoch >= s.epochs:
            return self._result("up-to-date", state, resumed_from, notes)
        net = model
        if ctx.is_distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        writer = self._tensorboard(ctx, state)
        try:
            while state.epoch < s.epochs:
                t0 = time.perf_counter()
                stopped = self._train_epoch(ctx, net, model, optimizer, scheduler, scaler, generator, state, train_ds)
                self._check_finite(model, state)
                if stopped:
                    self._save(ctx, model, optimizer, scheduler, scaler, generator, state, best=False)
                    return self._result("interrupted", state, resumed_from, notes)
                record = self._end_epoch(ctx, model, val_ds, optimizer, state, time.perf_counter() - t0)
                if self.task.scheduler_interval == "epoch":
                    scheduler.step()
                improved = self._update_best(state, record)
                if improved:
                    self._save(ctx, model, optimizer, scheduler, scaler, generator, state, best=True)
                self._save(ctx, model, optimizer, scheduler, scaler, generator, state, best=False)
                if ctx.is_main:
                    self._write_csv(state.history)
                    if writer is not None:
                        for key, value in record.items():
                            if isinstance(value, (int, float)) and key != "epoch":
                                writer.add_scalar(key, value, record["epoch"])
                        writer.flush()
                    if self.hooks.on_epoch:
                        self.hooks.on_epoch(dict(record, best=improved))
                if state.epoch < s.epochs and self._agree_stop(ctx, state):
                    return self._result("interrupted", state, resumed_from, notes)  # last.pt is this epoch's
        finally:
            if writer is not None:
                writer.close()
        return self._result("completed", state, resumed_from, notes)

    def _train_epoch(self, ctx, net, model, optimizer, scheduler, scaler, generator, state, train_ds) -> bool:
        """Run (the rest of) one epoch; True when stopped by a signal or the stop hook."""
        s, device = self.settings, ctx.device
        sampler = EpochSampler(len(train_ds), seed=s.seed, epoch=state.epoch, rank=ctx.rank, world=ctx.world_size)
        # drop_last keeps batch norm away from a 1-sample batch and gives every rank equal steps.
        drop_last = len(sampler.share) >= s.batch_size
        n_steps = len(sampler.share) // s.batch_size if drop_last else 1
        sampler.indices = sampler.share[state.step * s.batch_size :]
        loader = torch.utils.data.DataLoader(
            train_ds,
            batch_size=s.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=s.workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
        )
        sums = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in state.partial.items()}
        net.train()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp and device.type == "cuda")
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            step_ctx = StepContext(state.epoch, state.step, state.global_step, n_steps, generator, device)
            with autocast:
                loss, metrics = self.task.train_step(net, batch, step_ctx)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if s.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if self.task.scheduler_interval == "step":
                scheduler.step()
            n = next(iter(batch.values())).shape[0]
            for key, value in {"loss": loss.detach(), **metrics}.items():
                sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64, device=device)) + value.double() * n
            sums["_n"] = sums.get("_n", torch.zeros((), dtype=torch.float64, device=device)) + n
            state.step, state.global_step = state.step + 1, state.global_step + 1
            if ctx.is_main and self.hooks.on_step:
                self.hooks.on_step(state.epoch, state.step, n_steps)
            stop_here = self._stop_requested(state)
            if state.step % CHECK_EVERY == 0 or state.step >= n_steps or (stop_here and not ctx.is_distributed):
                flags = torch.tensor([float(stop_here), float(not torch.isfinite(sums["loss"]).item())], device=device)
                dist.all_reduce_sum(ctx, flags)
                state.partial = {k: float(v) for k, v in sums.items()}
                if flags[1] > 0:
                    raise TrainingDivergedError(self._diverged_message(state, f"loss is {sums['loss'].item()}"))
                if flags[0] > 0 and state.step < n_steps:
                    return True
        state.partial = {k: float(v) for k, v in sums.items()}
        return False

    def _end_epoch(self, ctx, model, val_ds, optimizer, state, seconds) -> dict[str, Any]:
        keys = sorted(state.partial)
        totals = torch.tensor([state.partial[k] for k in keys], dtype=torch.float64, device=ctx.device)
        dist.all_reduce_sum(ctx, totals)  # per-rank sums → epoch means over every process
        n = max(float(totals[keys.index("_n")]), 1.0) if "_n" in keys else 1.0
        train = {f"train_{k}": float(totals[i]) / n for i, k in enumerate(keys) if k != "_n"}
        state.partial = {}
        val = self._validate(ctx, model, val_ds)
        state.epoch, state.step = state.epoch + 1, 0
        record = {
            "epoch": state.epoch,
            **train,
            **val,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "time_s": round(seconds, 3),
        }
        state.history.append(record)
        return record

    @torch.no_grad()
    def _validate(self, ctx: DistContext, model, val_ds) -> dict[str, float]:
        """Validation on the unwrapped model (no DDP syncs), rows split across ranks without padding."""
        device, s = ctx.device, self.settings
        positions = list(range(ctx.rank, len(val_ds), ctx.world_size))
        loader = torch.utils.data.DataLoader(
            val_ds, batch_size=2 * s.batch_size, sampler=positions, num_workers=s.workers, collate_fn=_collate
        )
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp and device.type == "cuda")
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = self.task.val_step(model, batch)
            for key, value in out.items():
                sums[key] = sums[key] + value.double() if key in sums else value.double()
        for key in sorted(sums):
            dist.all_reduce_sum(ctx, sums[key])
        return {f"val_{k}" if not k.startswith("val_") else k: float(v) for k, v in self.task.val_summary(sums).items()}

    def _update_best(self, state: _State, record: dict[str, Any]) -> bool:
        key = self.task.best_metric
        value = record.get(key, record.get(f"val_{key}"))
        if value is None or not np.isfinite(value):
            return False
        better = state.best_value is None or (
            value > state.best_value if self.task.best_mode == "max" else value < state.best_value
        )
        if better:
            state.best_value, state.best_epoch = float(value), state.epoch
        return better

    def _check_finite(self, model, state: _State) -> None:
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDivergedError(self._diverged_message(state, "weights became non-finite"))

    def _diverged_message(self, state: _State, what: str) -> str:
        kept = (
            f"last good checkpoint kept: {self.run_dir / 'last.pt'}"
            if (self.run_dir / "last.pt").exists()
            else "no checkpoint was written"
        )
        return (
            f"training diverged at epoch {state.epoch + 1}, step {state.step}: {what}; {kept} "
            f"(check the input for NaN/inf, or lower the learning rate)"
        )

    # ----------------------------------------------------- state and files
    def _stop_requested(self, state: _State) -> bool:
        hook = self.hooks.should_stop
        received = self._signals is not None and self._signals.received is not None
        return received or bool(hook and hook(state.epoch, state.step))

    def _agree_stop(self, ctx: DistContext, state: _State) -> bool:
        flag = torch.tensor([float(self._stop_requested(state))], device=ctx.device)
        return bool(dist.all_reduce_sum(ctx, flag)[0] > 0)

    def _save(self, ctx, model, optimizer, scheduler, scaler, generator, state: _State, *, best: bool) -> None:
        # Every rank's RNG states and partial sums: a mid-epoch resume needs each rank's own.
        ranks = dist.all_gather_object(ctx, {**dist.rng_state(generator, ctx.device), "partial": state.partial})
        if not ctx.is_main:
            return
        task_state = self.task.state_dict() if hasattr(self.task, "state_dict") else None
        train = {
            "epoch": state.epoch,
            "step": state.step,
            "global_step": state.global_step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "task": task_state,
            "rng": {"world_size": ctx.world_size, "ranks": ranks},
            "history": state.history,
            "best_value": state.best_value,
            "best_epoch": state.best_epoch,
        }
        metrics = dict(state.history[-1]) if state.history else {}
        save_checkpoint(
            self.run_dir / ("best.pt" if best else "last.pt"),
            kind=self.task.checkpoint_kind,
            model_name=self.task.model_name,
            model_args=self.task.model_args,
            state_dict=model.state_dict(),
            config=self.config,
            data=self.data,
            metrics=metrics,
            train=train,
            provenance=self.provenance,
        )

    def _restore(self, ctx, path, model, optimizer, scheduler, scaler, generator, state: _State) -> list[str]:
        ckpt = load_checkpoint(path, kinds=[self.task.checkpoint_kind])
        diffs = [
            k
            for k in set(self.config) | set(ckpt.config)
            if k not in RESUMABLE and _norm(self.config.get(k)) != _norm(ckpt.config.get(k))
        ]
        if diffs:
            shown = ", ".join(f"{k}={ckpt.config.get(k)!r} (now {self.config.get(k)!r})" for k in sorted(diffs))
            raise ConfigError(f"{path}: cannot resume with other settings: {shown}; use the same options or --force")
        if ckpt.data.get("sha256") != self.data.get("sha256"):
            raise BadInputError(
                f"{path}: was trained on another data file ({ckpt.data.get('path')}); resume with "
                f"the same file or start over with --force"
            )
        if ckpt.train is None:
            raise BadInputError(f"{path}: holds no training state to resume from")
        tr = ckpt.train
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(tr["optimizer"])
        scheduler.load_state_dict(tr["scheduler"])
        scaler.load_state_dict(tr["scaler"])
        if hasattr(self.task, "load_state_dict") and tr.get("task") is not None:
            self.task.load_state_dict(tr["task"])
        state.epoch, state.step, state.global_step = int(tr["epoch"]), int(tr["step"]), int(tr["global_step"])
        state.history = list(tr["history"])
        state.best_value, state.best_epoch = tr.get("best_value"), tr.get("best_epoch")
        rng = tr["rng"]
        if int(rng["world_size"]) == ctx.world_size:
            mine = rng["ranks"][ctx.rank]
            dist.set_rng_state(mine, generator, ctx.device)
            state.partial = dict(mine.get("partial") or {})
            return []
        if state.step:  # the partial epoch's sums belong to another sharding: restart that epoch
            state.step, state.global_step = 0, state.global_step - state.step
        generator.manual_seed(self.settings.seed * 1009 + ctx.rank + 7919 * state.epoch)
        return [
            f"resumed with {ctx.world_size} processes instead of {rng['world_size']}: "
            f"augmentation and data order continue, but not bit-identically"
        ]

    def _prepare_run_dir(self) -> tuple[Path | None, bool]:
        """(checkpoint to resume from or None, whether the folder was created)."""
        run = self.run_dir
        check_run_dir(run, self.resume, self.force)
        if run.is_dir() and any(run.iterdir()):
            if self.resume:
                last = run / "last.pt"
                return (last if last.is_file() else None), False
            for name in _RUN_FILES:
                target = run / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            return None, False
        created = not run.exists()
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{run}: cannot create run folder ({exc.strerror or exc})") from None
        return None, created

    def _write_csv(self, history: list[dict[str, Any]]) -> None:
        import pandas as pd

        with atomic_path(self.run_dir / "metrics.csv", force=True) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False, float_format="%.6g")

    def _tensorboard(self, ctx: DistContext, state: _State):
        if not (self.settings.tensorboard and ctx.is_main):
            return None
        from torch.utils.tensorboard import SummaryWriter  # checked importable by the stage

        return SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=state.epoch + 1)

    def _result(self, status: str, state: _State, resumed_from: int | None, notes: list[str]) -> TrainResult:
        return TrainResult(
            self.run_dir,
            status,
            state.epoch,
            state.step,
            state.best_epoch,
            state.best_value,
            dict(state.history[-1]) if state.history else {},
            resumed_from,
            notes,
        )


def _collate(batch):
    return batch  # SliceDataset.__getitems__ returns collated batches


def _norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
