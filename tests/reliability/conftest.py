"""Reliability tests: tiny nets on one thread, ``small`` (a few rows of ``prepped``) and ``rh``, the
helpers (tiny checkpoints that fit the shared prep file, hashes, processes); importlib mode: no
test module imports another, so the helpers come as a fixture."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

TINY = ("channels=4,8,16",)
NVAE_ARGS = {
    "in_channels": 4,
    "out_channels": 4,
    "image_size": 64,
    "stem_channels": 4,
    "scales": 2,
    "groups_per_scale": [1, 1],
    "latent_channels": 4,
}
TEMP = re.compile(r"^\..+\.tmp$")


def tree_hash(path: Path) -> str:
    """SHA-256 of a file, or of a folder's relative names and contents."""
    digest = hashlib.sha256()
    path = Path(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return digest.hexdigest()


def temps(folder: Path) -> list[str]:
    """Temp files and folders (``.NAME.*.tmp``) anywhere under ``folder``."""
    return sorted(str(p) for p in Path(folder).rglob("*") if TEMP.match(p.name))


def unet_checkpoint(path: Path, slices: Path, fold: int = 0, channels: tuple[int, ...] = (4, 8, 16)) -> Path:
    """A seg-model checkpoint of an untrained tiny UNet whose data record fits ``slices``."""
    import torch

    from acdctool.data.loader import patient_folds
    from acdctool.io.checkpoint import file_sha256, save_checkpoint
    from acdctool.io.slices import SliceFile
    from acdctool.models.seg import build_seg_model, resolve_args

    with SliceFile(slices) as f:
        index = f.index
    torch.manual_seed(0)
    args = resolve_args("unet", {"channels": channels})
    train = sorted(index.patient[(index.fold >= 0) & (index.fold != fold) & (index.split == "train")].unique())
    return save_checkpoint(
        path,
        kind="seg-model",
        model_name="unet",
        model_args=args,
        state_dict=build_seg_model("unet", args).state_dict(),
        config={"fold": fold},
        data={"sha256": file_sha256(slices), "fold": fold, "folds": patient_folds(index), "train_patients": train},
    )


def nvae_checkpoint(path: Path, **overrides) -> Path:
    """An nvae-model checkpoint of an untrained tiny NVAE (64 px, single mask)."""
    import torch

    from acdctool.io.checkpoint import save_checkpoint
    from acdctool.models.nvae import NVAE

    torch.manual_seed(0)
    args = {**NVAE_ARGS, **overrides}
    return save_checkpoint(
        path,
        kind="nvae-model",
        model_name="nvae",
        model_args=NVAE_ARGS,
        state_dict=NVAE.from_args(args).state_dict(),
        config={},
        data={"sha256": "x"},
    )


def acdctool_cmd(*args) -> list[str]:
    """``acdctool ARGS`` as a subprocess of this interpreter (runs the tree under test)."""
    return [sys.executable, "-m", "acdctool", *map(str, args)]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def session_alive(session: int) -> list[int]:
    """PIDs of live (non-zombie) processes of session ``session`` (a command started with
    ``start_new_session=True`` and everything it forked)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def popen(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def rewrite_prep(src: Path, out: Path, name: str, fn, row: int) -> Path:
    """A copy of a slice file whose array ``name`` has ``fn`` applied to row ``row``."""
    from acdctool.io.slices import SliceFile, SliceWriter

    with SliceFile(src) as f:
        index, shape, kind = f.index, f.shape, f.kind
        arrays = {n: f.read(n) for n in f.arrays}
    arrays[name][row] = fn(arrays[name][row])
    specs = {n: (str(a.dtype), a.shape[1:-2]) for n, a in arrays.items()}
    with SliceWriter(out, kind=kind, config={}, provenance={}, shape=shape, arrays=specs) as w:
        w.append(index, **arrays)
    return out


def subset(src: Path, out: Path, rows) -> Path:
    """A copy of a slice file with only ``rows``."""
    from acdctool.io.slices import SliceFile, SliceWriter

    with SliceFile(src) as f:
        index, shape, kind = f.index.iloc[rows].reset_index(drop=True), f.shape, f.kind
        arrays = {n: f.read(n, rows) for n in f.arrays}
    specs = {n: (str(a.dtype), a.shape[1:-2]) for n, a in arrays.items()}
    with SliceWriter(out, kind=kind, config={}, provenance={}, shape=shape, arrays=specs) as w:
        w.append(index, **arrays)
    return out


@pytest.fixture(scope="module", autouse=True)
def _tiny_nets_one_thread(one_thread):
    """Tiny nets on one thread."""


@pytest.fixture(scope="session")
def rh() -> SimpleNamespace:
    """The helpers above, for the tests."""
    names = [
        "TINY",
        "NVAE_ARGS",
        "ENV",
        "tree_hash",
        "temps",
        "unet_checkpoint",
        "nvae_checkpoint",
        "acdctool_cmd",
        "session_alive",
        "popen",
        "rewrite_prep",
        "subset",
    ]
    return SimpleNamespace(**{n: globals()[n] for n in names})


@pytest.fixture(scope="session")
def small(prepped, tmp_path_factory) -> Path:
    """The first two slices of every volume of the shared prep file (fast training tests)."""
    from acdctool.io.slices import SliceFile

    with SliceFile(prepped) as f:
        rows = np.flatnonzero(f.index["slice"].to_numpy() < 2)
    return subset(prepped, tmp_path_factory.mktemp("small") / "small.h5", rows)
