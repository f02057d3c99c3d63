"""Self-describing model checkpoints, loaded without running any stored code.

A checkpoint is a ``torch.save`` dict of plain data (tensors, numbers, strings, lists, dicts),
so it loads with ``torch.load(weights_only=True)`` (SPEC §6) and the model is rebuilt from its
stored name and constructor arguments:

==================  =====================================================================
key                 content
==================  =====================================================================
format              always :data:`FORMAT`
schema_version      :data:`SCHEMA_VERSION`; another value → :class:`SchemaVersionError`
kind                what it holds: ``seg-model`` (train-seg) or ``nvae-model`` (train-nvae)
model               ``{"name": "unet", "args": {...constructor arguments...}}``
state_dict          the model weights (CPU tensors)
config              the training stage's resolved config (``config_to_dict``)
data                training data: ``path``, ``sha256`` of the slice file, ``fold`` (or
                    None), ``folds`` patient → fold id, ``train_patients``, ``val_patients``
metrics             validation metrics of the epoch this checkpoint was taken at
train               everything ``--resume`` needs (epoch, step, optimiser, scheduler, task,
                    RNG states, history); see :mod:`acdctool.train.state`
versions            acdctool, torch, monai, python versions that wrote it
provenance          :func:`acdctool.provenance.make_provenance`
==================  =====================================================================

Writes are atomic (temp file + ``os.replace``), so a job killed while saving leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from acdctool import __version__
from acdctool.errors import BadInputError, FileKindError, InputMissingError, SchemaVersionError
from acdctool.io.atomic import atomic_path

FORMAT = "acdctool-checkpoint"
SCHEMA_VERSION = 1
KINDS = ("seg-model", "nvae-model")
_REQUIRED = ("kind", "model", "state_dict", "config", "data")


@dataclass
class Checkpoint:
    """A loaded checkpoint (see the module docstring for each field)."""

    path: Path
    kind: str
    model_name: str
    model_args: dict[str, Any]
    state_dict: dict[str, Any]
    config: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def fold(self) -> int | None:
        """The held-out fold the model was trained without, or None (file's train/val split)."""
        fold = self.data.get("fold")
        return None if fold is None else int(fold)


def versions() -> dict[str, str]:
    """Versions of what shapes a checkpoint's content (read from metadata, no heavy import)."""
    out = {"acdctool": __version__, "python": platform.python_version()}
    for dist in ("torch", "monai"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


def save_checkpoint(
    path: Path,
    *,
    kind: str,
    model_name: str,
    model_args: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    config: Mapping[str, Any],
    data: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically, replacing ``path`` if it exists.

    Tensors are moved to CPU so a GPU checkpoint loads anywhere.

    Raises:
        ValueError: unknown ``kind`` (a programming error).
        OutputError: the folder is not writable.
    """
    import torch

    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    payload = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "model": {"name": model_name, "args": dict(model_args)},
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "config": dict(config),
        "data": dict(data),
        "metrics": dict(metrics or {}),
        "train": None if train is None else dict(train),
        "versions": versions(),
        "provenance": dict(provenance or {}),
    }
    with atomic_path(Path(path), force=True) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: Path | str, kinds: Iterable[str] | None = None, map_location: str = "cpu") -> Checkpoint:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: a ``.pt`` file written by :func:`save_checkpoint`.
        kinds: accepted kinds (default: any of :data:`KINDS`).
        map_location: where tensors go (default CPU).

    Raises:
        InputMissingError: no such file.
        FileKindError: not a checkpoint, not an acdctool checkpoint, or a kind not in ``kinds``.
        SchemaVersionError: written with another checkpoint schema version.
        BadInputError: truncated or corrupt, or fields missing.

    Example:
        >>> ckpt = load_checkpoint("runs/unet-f0/best.pt", kinds=["seg-model"])  # doctest: +SKIP
        >>> ckpt.model_name, ckpt.fold  # doctest: +SKIP
        ('unet', 0)
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"{path}: no such checkpoint")
    if not _starts_like_zip(path):  # torch.save (and so every acdctool checkpoint) writes a zip archive
        raise FileKindError(f"{path}: not a PyTorch checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():
            raise FileKindError(
                f"{path}: not an acdctool checkpoint (it stores Python objects that weights_only loading refuses)"
            ) from None
        raise BadInputError(f"{path}: truncated or corrupt checkpoint (copy it again or use another)") from None
    except Exception:  # torch raises RuntimeError/EOFError/ValueError/... depending on the damage
        raise BadInputError(f"{path}: truncated or corrupt checkpoint (copy it again or use another)") from None
    kinds = tuple(kinds) if kinds is not None else KINDS
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise FileKindError(f"{path}: not an acdctool checkpoint (a PyTorch file made by another tool)")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        made_by = (obj.get("versions") or {}).get("acdctool", "?")
        raise SchemaVersionError(
            f"{path}: checkpoint schema version {version} (acdctool {made_by}); this "
            f"acdctool {__version__} reads version {SCHEMA_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise BadInputError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if obj["kind"] not in kinds:
        raise FileKindError(f"{path}: a '{obj['kind']}' checkpoint, expected {' or '.join(repr(k) for k in kinds)}")
    model = obj["model"]
    return Checkpoint(
        path=path,
        kind=obj["kind"],
        model_name=str(model["name"]),
        model_args=dict(model["args"]),
        state_dict=obj["state_dict"],
        config=obj["config"],
        data=obj["data"],
        metrics=obj.get("metrics") or {},
        train=obj.get("train"),
        versions=obj.get("versions") or {},
        provenance=obj.get("provenance") or {},
    )


def file_sha256(path: Path | str, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file's bytes (what a checkpoint records as its data hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _starts_like_zip(path: Path) -> bool:
    # torch.save writes a zip archive; a truncated one loses its central directory, so
    # is_zipfile fails, but the local-file header magic at byte 0 survives.
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"
