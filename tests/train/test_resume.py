"""Exact resume of an NVAE run (its latents come from the global torch RNG), also from checkpoints
written by versions that stored a (disabled) GradScaler."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from acdctool.config import TrainNvaeConfig, config_to_dict
from acdctool.data.loader import SliceDataset, select_rows
from acdctool.errors import ConfigError
from acdctool.io.checkpoint import file_sha256, load_checkpoint
from acdctool.io.slices import SliceFile
from acdctool.train.loop import Hooks, LoopSettings, Trainer, TrainResult
from acdctool.train.nvae_task import NvaeTask

CFG = TrainNvaeConfig(stem_channels=4, scales=2, groups_per_scale=(1, 1), latent_channels=4, betas=(1, 1),
                      warmup_steps=10, batch_size=4, epochs=2, fold=0, device="cpu", sr_weight=1e-2,
                      compile=False)  # fmt: skip


def _train(
    path: Path, run_dir: Path, *, resume: bool = False, hooks: Hooks | None = None, cfg: TrainNvaeConfig = CFG
) -> TrainResult:
    """The trainer on an NVAE task that auto-encodes the ground truth (what train-nvae --input gt runs)."""
    with SliceFile(path) as f:
        index, shape, spacing = f.index, f.shape, f.spacing()
    train_rows, val_rows = select_rows(index, cfg.fold)
    train_ds, val_ds = (SliceDataset(path, rows, arrays=("gt",), labels=("gt",)) for rows in (train_rows, val_rows))
    model_args = {"in_channels": 4, "out_channels": 4, "image_size": shape[0], "stem_channels": cfg.stem_channels,
                  "scales": cfg.scales, "groups_per_scale": list(cfg.groups_per_scale),
                  "latent_channels": cfg.latent_channels}  # fmt: skip
    task = NvaeTask(model_args, cfg, len(train_ds) // cfg.batch_size, spacing)
    settings, config, data = LoopSettings.from_config(cfg), config_to_dict(cfg), {"sha256": file_sha256(path)}
    trainer = Trainer(task, settings, run_dir, config=config, data=data, resume=resume, hooks=hooks)
    return trainer.fit(train_ds, val_ds)


def _as_written_with_a_grad_scaler(path: Path) -> None:
    """Rewrite a checkpoint the way versions with an always-disabled GradScaler (and before
    ``--ema``) wrote it."""
    raw = torch.load(path, weights_only=True)
    assert "scaler" not in raw["train"]  # bf16 needs no loss scaling: nothing to store
    raw["train"]["scaler"] = {}  # GradScaler(enabled=False).state_dict()
    assert raw["config"].pop("ema") == 0 and raw["train"].pop("ema") is None
    torch.save(raw, path)


def test_nvae_resume_mid_epoch_is_bit_identical_also_from_old_checkpoints(tiny_h5, tmp_path):
    """Starting a DataLoader iterator draws from the global RNG: a mid-epoch resume must not draw
    again, or every later latent sample shifts. The loss's power-iteration vectors come back too."""
    full = _train(tiny_h5, tmp_path / "full")
    part = _train(tiny_h5, tmp_path / "part", hooks=Hooks(should_stop=lambda e, s: (e, s) == (0, 2)))
    assert (full.status, part.status, part.epoch, part.step) == ("completed", "interrupted", 0, 2)
    _as_written_with_a_grad_scaler(tmp_path / "part" / "last.pt")
    with pytest.raises(ConfigError, match="ema=None"):  # a field it lacks matches only at its off value
        _train(tiny_h5, tmp_path / "part", resume=True, cfg=replace(CFG, ema=0.9))
    assert _train(tiny_h5, tmp_path / "part", resume=True).status == "completed"
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert {"sr.u0", "sr.v0"} <= set(a.train["task"])
    assert all(torch.equal(a.train["task"][k], b.train["task"][k]) for k in a.train["task"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert strip(a.train["history"]) == strip(b.train["history"])
    assert "scaler" not in b.train


def test_weight_average_resumes_exactly_and_is_what_best_pt_holds(tiny_h5, tmp_path):
    """--ema: validation and best.pt use the averaged weights, last.pt the live ones plus the
    average, and a mid-epoch resume continues both bit-identically."""
    cfg = replace(CFG, ema=0.9)
    full = _train(tiny_h5, tmp_path / "full", cfg=cfg)
    part = _train(tiny_h5, tmp_path / "part", cfg=cfg, hooks=Hooks(should_stop=lambda e, s: (e, s) == (1, 1)))
    assert (full.status, part.status) == ("completed", "interrupted")
    assert _train(tiny_h5, tmp_path / "part", cfg=cfg, resume=True).status == "completed"
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert a.train["ema"]["updates"] == b.train["ema"]["updates"] > 0
    assert all(torch.equal(v, b.train["ema"]["tensors"][k]) for k, v in a.train["ema"]["tensors"].items())
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    best = load_checkpoint(tmp_path / "full" / "best.pt")
    assert best.metrics["epoch"] == 2  # the warm-up (10 steps) ends in epoch 2: the only candidate
    averaged = a.train["ema"]["tensors"]
    assert all(torch.equal(best.state_dict[k], averaged[k]) for k in averaged)
    assert any(not torch.equal(a.state_dict[k], averaged[k]) for k in averaged)  # live ≠ average
