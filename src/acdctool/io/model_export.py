"""Lean model files (``export-model``) and summaries of model files (``info``).

A **lean** copy is an ordinary acdctool checkpoint (:mod:`acdctool.io.checkpoint`) without the
``train`` entry (optimiser, scheduler, RNG state, loss history): weights, constructor
arguments, training config, the data record (fold, fold map, training patients, and the
preprocessing ``data["prep"]`` that ``predict`` reproduces), metrics and versions. It loads
wherever a checkpoint does (``predict``, ``gen-seg``, ``refine``), with
``torch.load(weights_only=True)``, but cannot be resumed.

A **TorchScript** export (segmentation nets only) is a traced module for use without acdctool
(``torch.jit.load``); the same metadata is stored as its extra file ``acdctool.json``. acdctool
itself never loads TorchScript (it would run code stored in the file): :func:`is_torchscript`
recognises one so commands can say so.

Example:
    >>> ck = load_checkpoint("runs/unet-f0/best.pt")  # doctest: +SKIP
    >>> write_lean(ck, Path("unet-f0.pt"), prep=None, provenance={})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.data.crop_rule import CropRule
from acdctool.errors import BadInputError
from acdctool.io.atomic import atomic_path
from acdctool.io.checkpoint import Checkpoint, save_checkpoint

TORCHSCRIPT_FORMAT = "acdctool-torchscript"
EXTRA_FILE = "acdctool.json"


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (it holds compiled ``code/``), read without loading it."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _data(ck: Checkpoint, prep: dict[str, Any] | None) -> dict[str, Any]:
    data = dict(ck.data)
    if prep is not None:
        data["prep"] = prep
    return data


def metadata(ck: Checkpoint, prep: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a lean or TorchScript copy says about its model (JSON-ready)."""
    return {
        "kind": ck.kind,
        "model": {"name": ck.model_name, "args": ck.model_args},
        "config": ck.config,
        "data": _data(ck, prep),
        "metrics": ck.metrics,
        "versions": ck.versions,
        "provenance": ck.provenance,
    }


def write_lean(ck: Checkpoint, out: Path, *, prep: dict[str, Any] | None, provenance: dict[str, Any]) -> Path:
    """Write ``ck`` without its training state (``train``) to ``out`` (atomically, replacing it).

    Args:
        ck: the loaded checkpoint.
        out: output path (the caller checks it may be written).
        prep: preprocessing record to add (None: keep the checkpoint's).
        provenance: the export's own record, stored under ``provenance["export"]``.
    """
    return save_checkpoint(
        out,
        kind=ck.kind,
        model_name=ck.model_name,
        model_args=ck.model_args,
        state_dict=ck.state_dict,
        config=ck.config,
        data=_data(ck, prep),
        metrics=ck.metrics,
        train=None,
        provenance={**ck.provenance, "export": provenance},
    )


def write_torchscript(ck: Checkpoint, out: Path, *, prep: dict[str, Any] | None, force: bool = True) -> Path:
    """Trace a segmentation net and save it as TorchScript with ``acdctool.json`` metadata.

    The trace is checked against the eager net on a random batch (max |Δ logit| < 1e-3).

    Raises:
        BadInputError: not a segmentation checkpoint; weights that do not fit; the trace differs.
    """
    import torch

    from acdctool.models.seg import build_seg_model

    if ck.kind != "seg-model":
        raise BadInputError(f"{ck.path}: --torchscript exports segmentation nets only (this is a {ck.kind})")
    record = _data(ck, prep).get("prep")
    size = int(record["size"]) if record else 128
    net = build_seg_model(ck.model_name, ck.model_args)
    try:
        net.load_state_dict(ck.state_dict)
    except RuntimeError as exc:
        raise BadInputError(f"{ck.path}: weights do not fit its architecture ({str(exc).splitlines()[0]})") from None
    net.eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.rand((2, int(ck.model_args.get("in_channels", 1)), size, size), generator=gen)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notes; the trace is checked below instead
        traced = torch.jit.trace(net, example, check_trace=False)
        diff = float((traced(example) - net(example)).abs().max())
    if not np.isfinite(diff) or diff > 1e-3:
        raise BadInputError(f"{ck.path}: the traced net differs from the original (max |Δ| {diff:.3g}); not exported")
    meta = {"format": TORCHSCRIPT_FORMAT, **metadata(ck, prep), "input": [None, 1, size, size]}
    with atomic_path(Path(out), force=force) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: json.dumps(meta, default=str)})
    return Path(out)


def torchscript_metadata(path: Path) -> dict[str, Any]:
    """The ``acdctool.json`` of a TorchScript export, read from the archive (no code is loaded).

    Raises:
        BadInputError: no acdctool metadata in the archive.
    """
    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if n.endswith(f"extra/{EXTRA_FILE}")), None)
        if name is None:
            raise BadInputError(f"{path}: a TorchScript file without acdctool metadata (made by another tool)")
        return json.loads(zf.read(name))


def summary(ck: Checkpoint) -> dict[str, Any]:
    """A JSON-ready summary of a checkpoint for ``acdctool info``."""
    data = ck.data
    prep = data.get("prep")
    n_params = int(sum(int(np.prod(tuple(v.shape))) for v in ck.state_dict.values() if hasattr(v, "shape")))
    return {
        "path": str(ck.path),
        "format": "checkpoint",
        "kind": ck.kind,
        "lean": ck.train is None,
        "model": ck.model_name,
        "args": ck.model_args,
        "parameters": n_params,
        "epoch": (ck.train or {}).get("epoch", ck.metrics.get("epoch")),
        "data": {
            "path": data.get("path"),
            "sha256": data.get("sha256"),
            "fold": data.get("fold"),
            "train_patients": len(data.get("train_patients") or []),
            "val_patients": len(data.get("val_patients") or []),
            "rows": data.get("rows"),
        },
        "prep": prep,
        "crop_rule": CropRule.from_prep_config(prep).name if prep else None,
        "metrics": ck.metrics,
        "versions": ck.versions,
        "provenance": {k: ck.provenance.get(k) for k in ("command", "created", "host") if k in ck.provenance},
    }


def summary_of_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The :func:`summary` fields a TorchScript export's ``acdctool.json`` provides."""
    data, prep = meta.get("data") or {}, (meta.get("data") or {}).get("prep")
    return {
        "kind": meta.get("kind"),
        "lean": True,
        "model": (meta.get("model") or {}).get("name"),
        "args": (meta.get("model") or {}).get("args"),
        "data": {k: data.get(k) for k in ("path", "sha256", "fold", "rows")},
        "prep": prep,
        "crop_rule": CropRule.from_prep_config(prep).name if prep else None,
        "metrics": meta.get("metrics") or {},
        "versions": meta.get("versions") or {},
    }
