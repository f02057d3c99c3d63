"""Self-describing model checkpoints, loaded without running any stored code.

A checkpoint is a ``torch.save`` dict of plain data (tensors, numbers, strings, lists, dicts),
so it loads with ``torch.load(weights_only=True)`` (SPEC §6) and the model is rebuilt from its
stored name and constructor arguments:

==================  =====================================================================
key                 content
==================  =====================================================================
format              always :data:`FORMAT`
schema_version      :data:`SCHEMA_VERSION` (1 is read too); another value → :class:`SchemaVersionError`
kind                what it holds: ``seg-model`` (train-seg) or ``nvae-model`` (train-nvae)
model               ``{"name": "unet", "args": {...constructor arguments...}}``; the name must
                    be one of :data:`MODEL_NAMES` of the kind
state_dict          the model weights (CPU tensors)
weights_sha256      (schema 2) :func:`weights_sha256` of ``state_dict``, checked on load, so
                    a damaged or edited weight is refused instead of silently loaded
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
previous checkpoint intact. The archive is built in memory and written with plain file I/O,
so a full disk is a clean :class:`~acdctool.errors.OutputError`.

Schema history: 1, the first; 2 adds ``weights_sha256``. Schema-1 checkpoints still load
(there is no checksum to verify).
"""

from __future__ import annotations

import hashlib
import io
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from acdctool import __version__
from acdctool.config import Arch, choices
from acdctool.errors import BadInputError, FileKindError, InputMissingError, SchemaVersionError
from acdctool.io.atomic import atomic_path, write_bytes

FORMAT = "acdctool-checkpoint"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Schema versions :func:`load_checkpoint` reads (1: no weights checksum)."""
KINDS = ("seg-model", "nvae-model")
MODEL_NAMES: dict[str, tuple[str, ...]] = {"seg-model": choices(Arch), "nvae-model": ("nvae",)}
"""The model names each kind of checkpoint may hold (what the tool can rebuild)."""
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
        OutputError: the folder is not writable, or the disk is full.
    """
    import torch

    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    weights = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "model": {"name": model_name, "args": dict(model_args)},
        "state_dict": weights,
        "weights_sha256": weights_sha256(weights),
        "config": dict(config),
        "data": dict(data),
        "metrics": dict(metrics or {}),
        "train": None if train is None else dict(train),
        "versions": versions(),
        "provenance": dict(provenance or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(Path(path), force=True) as tmp:
        write_bytes(tmp, buffer.getbuffer())
    return Path(path)


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 over a state dict's tensors: names in sorted order, each with dtype, shape and bytes.

    Example:
        >>> import torch
        >>> a = weights_sha256({"w": torch.zeros(2)})
        >>> a == weights_sha256({"w": torch.zeros(2)}), a == weights_sha256({"w": torch.ones(2)})
        (True, False)
    """
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode() + b"\0")
        if not isinstance(value, torch.Tensor):
            digest.update(repr(value).encode() + b"\0")
            continue
        t = value.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode() + b"\0")
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_checkpoint(path: Path | str, kinds: Iterable[str] | None = None, map_location: str = "cpu") -> Checkpoint:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: a ``.pt`` file written by :func:`save_checkpoint`.
        kinds: accepted kinds (default: any of :data:`KINDS`).
        map_location: where tensors go (default CPU).

    Raises:
        InputMissingError: no such file.
        FileKindError: not a checkpoint, not an acdctool checkpoint, or a kind not in ``kinds``.
        SchemaVersionError: written with a schema version not in :data:`READABLE_VERSIONS`.
        BadInputError: truncated or corrupt, fields missing or malformed, a model name the
            kind does not know, or weights that do not match their checksum.

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
    if version not in READABLE_VERSIONS:
        made_by = (obj.get("versions") or {}).get("acdctool", "?")
        raise SchemaVersionError(
            f"{path}: checkpoint schema version {version} (acdctool {made_by}); this "
            f"acdctool {__version__} reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if version >= 2 and "weights_sha256" not in obj:
        missing.append("weights_sha256")
    if missing:
        raise BadInputError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if obj["kind"] not in kinds:
        raise FileKindError(f"{path}: a '{obj['kind']}' checkpoint, expected {' or '.join(repr(k) for k in kinds)}")
    model, weights = obj["model"], obj["state_dict"]
    if not (isinstance(model, dict) and isinstance(model.get("args"), dict) and isinstance(weights, dict)):
        raise BadInputError(f"{path}: malformed checkpoint ('model' or 'state_dict' is not a mapping)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise BadInputError(f"{path}: malformed checkpoint (its state_dict holds more than named tensors)")
    known = MODEL_NAMES[obj["kind"]]
    if model.get("name") not in known:
        raise BadInputError(
            f"{path}: unknown model {model.get('name')!r} in a '{obj['kind']}' checkpoint (known: {', '.join(known)})"
        )
    if version >= 2 and weights_sha256(weights) != obj["weights_sha256"]:
        raise BadInputError(
            f"{path}: the weights do not match their checksum (the file is damaged or was edited); "
            "use another copy of the checkpoint"
        )
    for key in ("config", "data", "metrics", "train", "versions", "provenance"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise BadInputError(f"{path}: malformed checkpoint ('{key}' is not a mapping)")
    return Checkpoint(
        path=path,
        kind=obj["kind"],
        model_name=str(model["name"]),
        model_args=dict(model["args"]),
        state_dict=weights,
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
