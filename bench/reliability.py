#!/usr/bin/env python3
"""Hostile-input and fault corpus: every case a real ``acdctool`` subprocess on tiny synthetic data.

Usage: python bench/reliability.py [--only SUBSTRING] [--keep DIR] [-v]

Builds tiny fixtures once (synthetic phantoms, a prep file, two one-epoch UNet fold models,
a one-epoch NVAE, gen-seg / refine / make-3gram outputs), then runs a table of cases: bad
options, damaged and malformed inputs, wrong weights, malicious pickles, outputs that overlap
their inputs, a full disk (a 64 KiB tmpfs when run as root), SIGINT / SIGTERM / SIGHUP /
SIGKILL in mid-write, two trainings on one run folder, a forced run that fails. For every case
it checks the exit status and counts

- tracebacks: a Python traceback, "Exception ignored", or a death by a signal (segfault);
- unexpected: an error the CLI could only call "unexpected";
- damaged outputs: a protected input or previous output whose hash changed;
- leftovers: temp files or folders (``.*.tmp``), set-aside runs or locks left behind;
- silent accepts: a bad case that exited 0;
- pickle executions: a malicious pickle that ran its payload;
- orphan workers: a process of the command still alive after it exited;

and prints the totals. Exit status 0 when all of them are 0 and every case got its expected
exit status. Needs a few minutes on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
TINY = ["--net-arg", "channels=4,8,16", "--batch-size", "8", "--device", "cpu"]
NVAE_TINY = ["--stem-channels", "4", "--scales", "2", "--groups-per-scale", "1,1", "--latent-channels", "4"]
NVAE_TINY += ["--beta", "1,1", "--warmup-steps", "10", "--batch-size", "8", "--device", "cpu"]
TEMP_RE = re.compile(r"^\..+\.tmp$")


# ----------------------------------------------------------------- fixtures
def build_fixtures(root: Path) -> dict[str, Path]:
    """Tiny inputs every case may read (never written by a case: checked after each)."""
    import torch

    from acdctool.config import (
        GenSegConfig,
        NgramConfig,
        PrepConfig,
        RefineConfig,
        SynthConfig,
        TrainNvaeConfig,
        TrainSegConfig,
    )
    from acdctool.stages import gen_seg, make_3gram, prep, refine, synth, train_nvae, train_seg

    torch.set_num_threads(1)
    fx = {"acdc": root / "ACDC", "big": root / "ACDC12", "slices": root / "slices.h5"}
    synth.run(SynthConfig(patients=5, test_patients=1, seed=3), None, fx["acdc"])
    synth.run(SynthConfig(patients=12, seed=5), None, fx["big"])
    prep.run(PrepConfig(size=64, folds=2, val_fraction=0.0, workers=1), prep.Inputs(fx["acdc"]), fx["slices"])
    fx["big_slices"] = root / "big.h5"
    prep.run(PrepConfig(size=64, folds=2, val_fraction=0.0, workers=1), prep.Inputs(fx["big"]), fx["big_slices"])
    for k in (0, 1):
        cfg = TrainSegConfig(net_args=("channels=4,8,16",), fold=k, epochs=1, batch_size=8, device="cpu")
        fx[f"unet{k}"] = root / "runs" / f"unet-f{k}"
        train_seg.run(cfg, train_seg.Inputs(fx["slices"]), fx[f"unet{k}"])
    fx["seg"] = root / "seg.h5"
    models = (fx["unet0"] / "best.pt", fx["unet1"] / "best.pt")
    gen_seg.run(GenSegConfig(device="cpu"), gen_seg.Inputs(fx["slices"], models), fx["seg"])
    nv = TrainNvaeConfig(
        stem_channels=4,
        scales=2,
        groups_per_scale=(1, 1),
        latent_channels=4,
        betas=(1.0, 1.0),
        warmup_steps=10,
        batch_size=8,
        epochs=1,
        device="cpu",
        fold=0,
    )
    fx["nvae"] = root / "runs" / "nvae"
    train_nvae.run(nv, train_nvae.Inputs(fx["slices"]), fx["nvae"])
    fx["refined"] = root / "refined.h5"
    refine.run(RefineConfig(method="morph"), refine.Inputs(fx["seg"]), fx["refined"])
    fx["seg3"] = root / "seg3.h5"
    make_3gram.run(NgramConfig(), make_3gram.Inputs(fx["seg"]), fx["seg3"])
    fx["big_seg"] = root / "big_seg.h5"
    _noisy_seg(fx["big_slices"], fx["big_seg"])
    return fx


def _noisy_seg(src: Path, out: Path) -> None:
    """A seg-kind copy of a prep file whose predictions are its ground truth with some errors."""
    rng = np.random.default_rng(0)

    def pred(gt: np.ndarray, index: Any) -> np.ndarray:
        noise = rng.random(gt.shape) < 0.01
        return np.where(noise, rng.integers(0, 4, gt.shape), gt).astype(np.uint8)

    rewrite(src, out, kind="seg", pred=pred)


def rewrite(src: Path, out: Path, kind: str | None = None, **changes: Any) -> Path:
    """Copy a slice file with arrays replaced: ``name=array``, ``name=fn(gt_or_array, index)`` or None (drop)."""
    from acdctool.io.slices import INDEX_COLUMNS, SliceFile, SliceWriter

    with SliceFile(src) as f:
        index, kind0, shape = f.index.copy(), f.kind, f.shape
        arrays = {n: f.read(n) for n in f.arrays}
    rows = changes.pop("rows", None)
    for name, value in changes.items():
        if value is None:
            arrays.pop(name, None)
        elif callable(value):
            arrays[name] = value(arrays.get(name, arrays.get("gt")).copy(), index)
        else:
            arrays[name] = value
    if rows is not None:
        index = index.iloc[rows].reset_index(drop=True)
        arrays = {n: a[rows] for n, a in arrays.items()}
    if (kind or kind0) in ("seg", "refined", "3gram") and (index["model"] == "").all():
        index["model"] = "unet"
    extra = {c: ("str" if index[c].dtype == object else str(index[c].dtype)) for c in index if c not in INDEX_COLUMNS}
    specs = {n: (str(a.dtype), a.shape[1:-2]) for n, a in arrays.items()}
    with SliceWriter(out, kind=kind or kind0, config={}, provenance={}, shape=shape, arrays=specs, columns=extra) as w:
        w.append(index, **arrays)
    return out


def set_attr(src: Path, out: Path, **attrs: Any) -> Path:
    import h5py

    shutil.copy(src, out)
    with h5py.File(out, "r+") as h5:
        for k, v in attrs.items():
            h5.attrs[k] = v
    return out


def corrupt_chunk(src: Path, out: Path, name: str, row: int) -> Path:
    """Overwrite the bytes of one row's chunk of ``name`` with garbage (a bit-rotted disk)."""
    import h5py

    shutil.copy(src, out)
    with h5py.File(out, "r") as h5:
        info = h5[name].id.get_chunk_info(row)
    with open(out, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xde\xad\xbe\xef" * (info.size // 4))
    return out


def edit_checkpoint(src: Path, out: Path, fn: Callable[[dict], None], rehash: bool = True) -> Path:
    import torch

    from acdctool.io.checkpoint import weights_sha256

    raw = torch.load(src, weights_only=True)
    fn(raw)
    if rehash and "weights_sha256" in raw:
        raw["weights_sha256"] = weights_sha256(raw["state_dict"])
    torch.save(raw, out)
    return out


class Evil:
    """A pickle payload: unpickling it creates a marker file (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def evil_files(w: Path, marker: Path, legit: Path) -> dict[str, Path]:
    import torch

    out = {}
    out["raw"] = w / "raw.pt"
    out["raw"].write_bytes(pickle.dumps({"state_dict": Evil(marker)}))
    out["zip"] = w / "zip.pt"
    torch.save({"format": "acdctool-checkpoint", "payload": Evil(marker)}, out["zip"])
    raw = torch.load(legit, weights_only=True)
    raw["train"] = {"epoch": 0, "boom": Evil(marker)}
    out["nested"] = w / "nested.pt"
    torch.save(raw, out["nested"])
    raw = torch.load(legit, weights_only=True)
    raw["model"]["args"]["channels"] = Evil(marker)
    out["args"] = w / "args.pt"
    torch.save(raw, out["args"])
    return out


def nifti_edit(path: Path, fn: Callable[[np.ndarray], np.ndarray] | None = None, zooms=None, dtype=None) -> None:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if fn is not None:
        data = fn(data.copy())
    header = img.header.copy()
    if dtype is not None:
        header.set_data_dtype(dtype)
    if zooms is not None:
        header["pixdim"][1 : 1 + len(zooms)] = zooms
    nib.save(nib.Nifti1Image(data, img.affine, header), str(path))


def raw_pixdim(path: Path, index: int, value: float) -> None:
    """Set ``pixdim[index]`` in the stored header bytes (nibabel would "fix" a 0 on save)."""
    import gzip
    import struct

    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[76 + 4 * index : 80 + 4 * index] = struct.pack("<f", value)
    path.write_bytes(gzip.compress(bytes(raw)))


# ---------------------------------------------------------------- the cases
@dataclass
class Case:
    name: str
    group: str  # option, input, overlap, pickle, fault, signal, train, good
    argv: Callable[[Path], list[str]] | list[str]
    expect: tuple[int, ...]
    setup: Callable[[Path], None] | None = None
    protect: tuple[str, ...] = ()  # workdir paths that must stay byte-identical
    check: Callable[[Path, subprocess.CompletedProcess], list[str]] | None = None
    runner: Callable[[Case, Path], subprocess.CompletedProcess] | None = None
    needs_root: bool = False
    message: str | None = None  # must appear on stderr


@dataclass
class Outcome:
    case: Case
    code: int | None
    problems: list[str] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    seconds: float = 0.0
    stderr: str = ""


def acdctool(*args: Any) -> list[str]:
    return [sys.executable, "-m", "acdctool", *map(str, args)]


def make_cases(fx: dict[str, Path]) -> list[Case]:
    S, SEG, REF = fx["slices"], fx["seg"], fx["refined"]
    U0, U1, NV = fx["unet0"] / "best.pt", fx["unet1"] / "best.pt", fx["nvae"] / "best.pt"
    ACDC = fx["acdc"]
    cases: list[Case] = []

    def add(name, group, argv, expect, **kw):
        cases.append(Case(name, group, argv, expect if isinstance(expect, tuple) else (expect,), **kw))

    # -- options: every number checked (type, finite, range), choices, before anything is read
    opt = [
        ("prep", ["ACDC", "-o", "x.h5"], "--size", "0"),
        ("prep", ["ACDC", "-o", "x.h5"], "--size", "99999"),
        ("prep", ["ACDC", "-o", "x.h5"], "--margin", "nan"),
        ("prep", ["ACDC", "-o", "x.h5"], "--folds", "1e3"),
        ("prep", ["ACDC", "-o", "x.h5"], "--seed", "-1"),
        ("prep", ["ACDC", "-o", "x.h5"], "--seed", "99999999999999999999"),
        ("prep", ["ACDC", "-o", "x.h5"], "--nonfinite", "ignore"),
        ("synth", ["syn"], "--frames", "100000000"),
        ("train-seg", ["s.h5", "-o", "run"], "--epochs", "1e20"),
        ("train-seg", ["s.h5", "-o", "run"], "--batch-size", "99999999999"),
        ("train-seg", ["s.h5", "-o", "run"], "--lr", "nan"),
        ("train-seg", ["s.h5", "-o", "run"], "--grad-clip", "inf"),
        ("train-seg", ["s.h5", "-o", "run"], "--workers", "100000"),
        ("train-nvae", ["s.h5", "-o", "run"], "--beta", "nan,1,1"),
        ("train-nvae", ["s.h5", "-o", "run"], "--beta", "1,2"),
        ("train-nvae", ["s.h5", "-o", "run"], "--scales", "99"),
        ("train-nvae", ["s.h5", "-o", "run"], "--dice-weight", "nan"),
        ("refine", ["seg.h5", "-o", "r.h5"], "--temperature", "nan"),
        ("refine", ["seg.h5", "-o", "r.h5"], "--min-agreement", "nan"),
        ("refine", ["seg.h5", "-o", "r.h5"], "--partial", "0,abc"),
        ("refine", ["seg.h5", "-o", "r.h5"], "--samples", "99999999"),
        ("eval", ["seg.h5", "-o", "rep"], "--threshold", "nan"),
        ("eval", ["seg.h5", "-o", "rep"], "--top-k", "-1"),
        ("gen-seg", ["s.h5", "-m", "a.pt", "-o", "x.h5"], "--batch-size", "0"),
    ]
    for cmd, base, option, value in opt:
        add(f"option {cmd} {option} {value}", "option", acdctool(cmd, *base, option, value, "-q"), 2)

    # -- prep on damaged ACDC folders (a private copy of the 5-patient folder)
    def acdc_copy(edit: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
        def setup(w: Path) -> None:
            shutil.copytree(ACDC / "training", w / "ACDC")
            if edit is not None:
                edit(w / "ACDC" / "patient001")

        return setup

    def frame(p: Path, gt: bool = False) -> Path:
        return p / f"patient001_frame01{'_gt' if gt else ''}.nii.gz"

    prep_bad = [
        ("truncated NIfTI", lambda p: frame(p).write_bytes(frame(p).read_bytes()[:500]), 65),
        ("NIfTI not gzip", lambda p: frame(p).write_bytes(b"not a nifti file at all" * 40), 65),
        ("mask labels 5", lambda p: nifti_edit(frame(p, True), lambda a: np.where(a == 3, 5, a)), 65),
        ("pixdim 0", lambda p: raw_pixdim(frame(p), 1, 0.0), 65),
        ("NaN in the crop", lambda p: nifti_edit(frame(p), _nan_centre, dtype=np.float32), 65),
        ("4D image", lambda p: nifti_edit(frame(p), lambda a: np.stack([a, a], -1)), 65),
        ("image missing", lambda p: frame(p).unlink(), 66),
        ("Info.cfg no ED", lambda p: (p / "Info.cfg").write_text("ES: 5\nGroup: NOR\nNbFrame: 12\n"), 65),
        ("Info.cfg group bogus", lambda p: _info(p, Group="ALIEN"), 65),
    ]
    for name, edit, code in prep_bad:
        add(
            f"prep {name}",
            "input",
            acdctool("prep", "ACDC", "-o", "x.h5", "--size", 64, "-q"),
            code,
            setup=acdc_copy(edit),
            protect=("ACDC",),
            check=_no_output("x.h5"),
        )
    add(
        "prep NaN outside the crop is harmless",
        "good",
        acdctool("prep", "ACDC", "-o", "x.h5", "--size", 64, "-q"),
        0,
        setup=acdc_copy(lambda p: nifti_edit(frame(p), _nan_corner, dtype=np.float32)),
        protect=("ACDC",),
    )
    add(
        "prep --nonfinite zero",
        "good",
        acdctool("prep", "ACDC", "-o", "x.h5", "--size", 64, "--nonfinite", "zero", "-q"),
        0,
        setup=acdc_copy(lambda p: nifti_edit(frame(p), _nan_centre, dtype=np.float32)),
        protect=("ACDC",),
    )
    add("prep missing folder", "input", acdctool("prep", "nope", "-o", "x.h5", "-q"), 66)
    add("prep a file as folder", "input", acdctool("prep", S, "-o", "x.h5", "-q"), 65)
    add(
        "prep empty folder",
        "input",
        acdctool("prep", "empty", "-o", "x.h5", "-q"),
        65,
        setup=lambda w: (w / "empty").mkdir(),
    )

    # -- slice files: damaged, malformed, wrong kind, out-of-range values
    def derived(name: str, make: Callable[[Path], Path]) -> Callable[[Path], None]:
        return lambda w: make(w / name) and None

    bad_files = {
        "not HDF5": lambda p: p.write_bytes(b"\x89HDF\r\n garbage"),
        "schema 99": lambda p: set_attr(S, p, schema_version=99),
        "schema 'abc'": lambda p: set_attr(S, p, schema_version="abc"),
        "config not JSON": lambda p: set_attr(S, p, config="{not json"),
        "provenance a list": lambda p: set_attr(S, p, provenance="[1, 2]"),
        "truncated": lambda p: p.write_bytes(S.read_bytes()[: S.stat().st_size // 2]),
        "index column of text": lambda p: _retype_index(S, p),
    }
    for label, make in bad_files.items():
        for cmd, argv in (
            ("info", lambda f: acdctool("info", f)),
            ("eval", lambda f: acdctool("eval", f, "-o", "rep", "-q")),
            ("train-seg", lambda f: acdctool("train-seg", f, "-o", "run", "--fold", 0, "--epochs", 1, *TINY, "-q")),
        ):
            if cmd == "eval" and label not in ("schema 99", "config not JSON", "index column of text"):
                continue  # the same reader as info: a few suffice
            if cmd == "train-seg" and label not in ("schema 'abc'", "provenance a list"):
                continue
            add(
                f"{cmd} on {label}",
                "input",
                argv("bad.h5"),
                65,
                setup=derived("bad.h5", make),
                protect=("bad.h5",),
                check=_no_output("rep", "run"),
            )
    add("info on missing file", "input", acdctool("info", "nope.h5"), 66)
    add(
        "info on corrupt chunk",
        "input",
        acdctool("info", "bad.h5"),
        65,
        setup=derived("bad.h5", lambda p: corrupt_chunk(S, p, "gt", 3)),
        message="row 3",
    )
    add(
        "eval on corrupt chunk",
        "input",
        acdctool("eval", "bad.h5", "-o", "rep", "-q"),
        65,
        setup=derived("bad.h5", lambda p: corrupt_chunk(SEG, p, "pred", 7)),
        message="row 7",
        check=_no_output("rep"),
    )
    add(
        "train-seg on corrupt chunk",
        "input",
        acdctool("train-seg", "bad.h5", "-o", "run", "--fold", 0, "--epochs", 1, *TINY, "-q"),
        65,
        setup=derived("bad.h5", lambda p: corrupt_chunk(S, p, "image", 5)),
        message="row 5",
        check=_no_output("run"),
    )
    zero = lambda p: rewrite(SEG, p, rows=np.array([], np.int64))  # noqa: E731
    for cmd, argv, code in (
        ("eval", acdctool("eval", "zero.h5", "-o", "rep", "-q"), 65),
        ("export", acdctool("export", "zero.h5", "--like", ACDC, "-o", "nii", "-q"), 65),
        ("refine", acdctool("refine", "zero.h5", "--method", "morph", "-o", "r.h5", "-q"), 65),
        ("make-3gram", acdctool("make-3gram", "zero.h5", "-o", "z3.h5", "-q"), 65),
    ):
        add(
            f"{cmd} on a zero-row file",
            "input",
            argv,
            code,
            setup=derived("zero.h5", zero),
            check=_no_output("rep", "nii", "r.h5", "z3.h5", "run"),
        )
    add("info on a zero-row file", "good", acdctool("info", "zero.h5"), 0, setup=derived("zero.h5", zero))
    labels5 = lambda p: rewrite(S, p, gt=lambda g, i: np.where(g == 3, 5, g).astype(np.uint8))  # noqa: E731
    nan_img = lambda p: rewrite(S, p, image=lambda a, i: np.where(np.arange(len(a))[:, None, None] == 4, np.nan, a))  # noqa: E731
    add(
        "train-seg labels > 3 in gt",
        "input",
        acdctool("train-seg", "bad.h5", "-o", "run", "--fold", 0, "--epochs", 1, *TINY, "-q"),
        65,
        setup=derived("bad.h5", labels5),
        message="labels outside 0..3",
        check=_no_output("run"),
    )
    add(
        "train-nvae labels > 3 in gt",
        "input",
        acdctool("train-nvae", "bad.h5", "-o", "run", "--fold", 0, *NVAE_TINY, "-q"),
        65,
        setup=derived("bad.h5", labels5),
        check=_no_output("run"),
    )
    add(
        "train-seg NaN image",
        "input",
        acdctool("train-seg", "bad.h5", "-o", "run", "--fold", 0, "--epochs", 1, *TINY, "-q"),
        65,
        setup=derived("bad.h5", nan_img),
        message="row 4",
        check=_no_output("run"),
    )
    add(
        "gen-seg NaN image",
        "input",
        acdctool("gen-seg", "bad.h5", "-m", U0, "-m", U1, "-o", "g.h5", "--device", "cpu", "-q"),
        65,
        setup=derived("bad.h5", nan_img),
        message="row 4",
        check=_no_output("g.h5"),
    )
    add(
        "eval labels > 3 in pred",
        "input",
        acdctool("eval", "bad.h5", "-o", "rep", "-q"),
        65,
        setup=derived("bad.h5", lambda p: rewrite(SEG, p, pred=lambda a, i: np.full_like(a, 9))),
        check=_no_output("rep"),
    )
    add(
        "refine labels > 3 in pred",
        "input",
        acdctool("refine", "bad.h5", "--method", "morph", "-o", "r.h5", "-q"),
        (65,),
        setup=derived("bad.h5", lambda p: rewrite(SEG, p, pred=lambda a, i: np.full_like(a, 9))),
        check=_no_output("r.h5"),
    )
    add(
        "train-seg on a seg file",
        "input",
        acdctool("train-seg", SEG, "-o", "run", "--fold", 0, "--epochs", 1, *TINY, "-q"),
        65,
    )
    add(
        "make-3gram missing slice",
        "input",
        acdctool("make-3gram", "bad.h5", "-o", "x3.h5", "-q"),
        65,
        setup=derived("bad.h5", lambda p: rewrite(SEG, p, rows=np.arange(1, 30))),
        check=_no_output("x3.h5"),
    )
    add(
        "refine 3gram on a seg file",
        "input",
        acdctool("refine", SEG, "--nvae", NV, "--context", "3gram", "-o", "r.h5", "-q"),
        65,
    )
    add(
        "eval --gt without rows",
        "input",
        acdctool("eval", SEG, "--gt", "bad.h5", "-o", "rep", "-q"),
        65,
        setup=derived("bad.h5", lambda p: rewrite(S, p, rows=np.arange(0, 20))),
        check=_no_output("rep"),
    )
    add(
        "export like folder missing patients",
        "input",
        acdctool("export", SEG, "--like", "part", "-o", "nii", "-q"),
        66,
        setup=lambda w: shutil.copytree(ACDC / "training" / "patient001", w / "part" / "patient001"),
        check=_no_output("nii"),
    )

    # -- net arguments
    for arg, code in (("channels=abc", 2), ("dropout=2", 2), ("kernel_size=2", 2), ("channels", 2)):
        add(
            f"train-seg --net-arg {arg}",
            "option",
            acdctool("train-seg", S, "-o", "run", "--epochs", 1, "--net-arg", arg, "--device", "cpu", "-q"),
            code,
            check=_no_output("run"),
        )

    # -- checkpoints: damaged, edited, wrong kind, unknown model, malicious
    def ck(name: str, src: Path, fn: Callable[[dict], None], rehash: bool = True) -> Callable[[Path], None]:
        return lambda w: edit_checkpoint(src, w / name, fn, rehash) and None

    def flip(raw: dict) -> None:
        key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point() and v.numel() > 4)
        # contiguous first: a channels_last-trained weight has no flat view
        raw["state_dict"][key] = raw["state_dict"][key].contiguous()
        raw["state_dict"][key].view(-1)[0] = 3.7e37

    def reshape(raw: dict) -> None:
        key = next(k for k, v in raw["state_dict"].items() if v.ndim == 4 and v.shape[1] > 1)
        raw["state_dict"][key] = raw["state_dict"][key][:, :1].clone()

    ck_cases = [
        ("flipped weight", flip, False, 65),
        ("weights of another shape", reshape, True, 65),
        ("unknown model name", lambda r: r["model"].__setitem__("name", "vnet"), True, 65),
        ("model args of the wrong type", lambda r: r["model"]["args"].__setitem__("channels", "abc"), True, 65),
    ]
    for label, fn, rehash, code in ck_cases:
        add(
            f"gen-seg --model with {label}",
            "input",
            acdctool("gen-seg", S, "-m", "m.pt", "-m", U1, "-o", "g.h5", "--device", "cpu", "-q"),
            code,
            setup=ck("m.pt", U0, fn, rehash),
            protect=("m.pt",),
            check=_no_output("g.h5"),
        )
    for label, fn, rehash, code in ck_cases[:2]:
        add(
            f"refine --nvae with {label}",
            "input",
            acdctool("refine", SEG, "--nvae", "n.pt", "-o", "r.h5", "--device", "cpu", "-q"),
            code,
            setup=ck("n.pt", NV, fn, rehash),
            check=_no_output("r.h5"),
        )
    add(
        "gen-seg schema-1 checkpoint still loads",
        "good",
        acdctool("gen-seg", S, "-m", "m.pt", "-m", U1, "-o", "g.h5", "--device", "cpu", "-q"),
        0,
        setup=ck("m.pt", U0, _as_schema_1, False),
    )
    add(
        "gen-seg truncated checkpoint",
        "input",
        acdctool("gen-seg", S, "-m", "m.pt", "-o", "g.h5", "-q"),
        65,
        setup=lambda w: (w / "m.pt").write_bytes(U0.read_bytes()[:3000]),
    )
    add("gen-seg nvae as --model", "input", acdctool("gen-seg", S, "-m", NV, "-o", "g.h5", "-q"), 65)
    add("refine seg model as --nvae", "input", acdctool("refine", SEG, "--nvae", U0, "-o", "r.h5", "-q"), 65)
    for variant in ("raw", "zip", "nested", "args"):
        add(
            f"pickle {variant} as gen-seg --model",
            "pickle",
            acdctool("gen-seg", S, "-m", f"{variant}.pt", "-o", "g.h5", "-q"),
            65,
            setup=_evil_setup(U0),
            check=_no_output("g.h5"),
        )
    for variant in ("nested",):
        add(
            f"pickle {variant} as refine --nvae",
            "pickle",
            acdctool("refine", SEG, "--nvae", f"{variant}.pt", "-o", "r.h5", "-q"),
            65,
            setup=_evil_setup(NV),
            check=_no_output("r.h5"),
        )
    add(
        "pickle as last.pt of a resumed run",
        "pickle",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 2, "--resume", *TINY, "-q"),
        65,
        setup=_evil_run(fx["unet0"], U0),
        protect=("run",),
    )

    # -- outputs that overlap their inputs (each with --force: nothing of the inputs may change)
    def copy_in(*names_srcs: tuple[str, Path]) -> Callable[[Path], None]:
        def setup(w: Path) -> None:
            for name, src in names_srcs:
                dst = w / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)

        return setup

    ov = [
        ("eval x/refined.h5 -o x", ["eval", "x/refined.h5", "-o", "x", "--force"], copy_in(("x/refined.h5", REF)), "x"),
        (
            "eval -o folder of its --baseline",
            ["eval", "r.h5", "--baseline", "b/seg.h5", "-o", "b", "--force"],
            copy_in(("r.h5", REF), ("b/seg.h5", SEG)),
            "b",
        ),
        (
            "export --like ACDC -o ACDC",
            ["export", "s.h5", "--like", "ACDC", "-o", "ACDC", "--force"],
            copy_in(("s.h5", SEG), ("ACDC", ACDC / "training")),
            "ACDC",
        ),
        (
            "export -o a patient folder",
            ["export", "s.h5", "--like", "ACDC", "-o", "ACDC/patient002", "--force"],
            copy_in(("s.h5", SEG), ("ACDC", ACDC / "training")),
            "ACDC",
        ),
        (
            "export -o folder holding the file",
            ["export", "d/s.h5", "--like", ACDC, "-o", "d", "--force"],
            copy_in(("d/s.h5", SEG)),
            "d",
        ),
        (
            "gen-seg -o its --model",
            ["gen-seg", S, "-m", "m/best.pt", "-m", U1, "-o", "m/best.pt", "--force", "--device", "cpu"],
            copy_in(("m/best.pt", U0)),
            "m",
        ),
        (
            "gen-seg -o its slices",
            ["gen-seg", "s.h5", "-m", U0, "-o", "s.h5", "--force", "--device", "cpu"],
            copy_in(("s.h5", S)),
            "s.h5",
        ),
        (
            "prep -o an input NIfTI",
            ["prep", "ACDC", "-o", "ACDC/patient001/patient001_frame01.nii.gz", "--force"],
            copy_in(("ACDC", ACDC / "training")),
            "ACDC",
        ),
        (
            "refine -o its input",
            ["refine", "s.h5", "--method", "morph", "-o", "s.h5", "--force"],
            copy_in(("s.h5", SEG)),
            "s.h5",
        ),
        (
            "refine -o its --nvae",
            # --allow-seen: the fixture NVAE trained on these patients (else exit 65 comes first)
            ["refine", SEG, "--nvae", "n.pt", "--allow-seen", "-o", "n.pt", "--force"],
            copy_in(("n.pt", NV)),
            "n.pt",
        ),
        (
            "refine -o a symlink to its input",
            ["refine", "s.h5", "--method", "morph", "-o", "link.h5", "--force"],
            lambda w: (shutil.copy(SEG, w / "s.h5"), (w / "link.h5").symlink_to("s.h5")),
            "s.h5",
        ),
        (
            "train-seg -o the folder of its input",
            ["train-seg", "run/best.pt", "-o", "run", "--force", "--epochs", 1, *TINY],
            copy_in(("run", fx["unet0"])),
            "run",
        ),
        (
            "train-seg data at RUN/last.pt",
            ["train-seg", "run/last.pt", "-o", "run", "--force", "--epochs", 1, *TINY],
            lambda w: (w / "run").mkdir() or shutil.copy(S, w / "run" / "last.pt"),
            "run",
        ),
    ]
    for name, argv, setup, protect in ov:
        add(f"overlap: {name}", "overlap", acdctool(*argv, "-q"), 73, setup=setup, protect=(protect,))
    add(
        "eval -o existing folder without --force",
        "overlap",
        acdctool("eval", REF, "-o", "rep", "-q"),
        73,
        setup=lambda w: (w / "rep").mkdir() or (w / "rep" / "keep.txt").write_text("x"),
        protect=("rep",),
    )
    add(
        "prep -o existing file without --force",
        "overlap",
        acdctool("prep", ACDC, "-o", "x.h5", "-q"),
        73,
        setup=copy_in(("x.h5", S)),
        protect=("x.h5",),
    )
    add(
        "output under a file",
        "overlap",
        acdctool("refine", SEG, "--method", "morph", "-o", "f/r.h5", "-q"),
        73,
        setup=lambda w: (w / "f").write_text("a file"),
        protect=("f",),
    )

    # -- full disk: a tiny tmpfs as the output folder
    for name, argv, size in (
        ("prep", ["prep", ACDC, "-o", "full/x.h5", "--size", 64], "256k"),
        ("gen-seg", ["gen-seg", S, "-m", U0, "-m", U1, "-o", "full/g.h5", "--device", "cpu"], "256k"),
        ("refine", ["refine", SEG, "--method", "morph", "-o", "full/r.h5"], "256k"),
        ("eval", ["eval", REF, "--baseline", SEG, "-o", "full/rep"], "128k"),
        ("train-seg", ["train-seg", S, "-o", "full/run", "--fold", 0, "--epochs", 1, *TINY], "48k"),
    ):
        add(
            f"disk full: {name}",
            "fault",
            acdctool(*argv, "-q"),
            73,
            setup=_tmpfs(size),
            needs_root=True,
            message="no space left",
            check=_tmpfs_empty,
        )

    # -- signals in mid-write: one line, 128 + N, no temp, no worker left, previous output intact
    big_seg, big_acdc = fx["big_seg"], fx["big"]
    sig_cmds = [
        ("prep", ["prep", big_acdc, "-o", "out.h5", "--size", 64, "--workers", 2, "--force"], "out.h5", S),
        ("eval", ["eval", big_seg, "-o", "out", "--workers", 2, "--force"], "out", None),
        (
            "gen-seg",
            ["gen-seg", S, "-m", U0, "-m", U1, "-o", "out.h5", "--device", "cpu", "--batch-size", 1, "--force"],
            "out.h5",
            S,
        ),
        (
            "refine",
            ["refine", big_seg, "--method", "morph", "-o", "out.h5", "--batch-size", 1, "--force"],
            "out.h5",
            SEG,
        ),
        ("export", ["export", big_seg, "--like", big_acdc, "-o", "out", "--force"], "out", None),
        ("synth", ["synth", "out", "--patients", 30, "--force"], "out", None),
    ]
    sigs = (("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130))
    for i, (cmd, argv, target, previous) in enumerate(sig_cmds):
        for j, (sig, code) in enumerate(sigs):
            if (i + j) % 3 and cmd != "eval":
                continue  # every command gets one signal, eval (with its worker processes) all three
            add(
                f"{sig} during {cmd}",
                "signal",
                acdctool(*argv, "-q"),
                code,
                setup=_previous(target, previous),
                protect=(target,),
                runner=_signal_runner(getattr(signal, sig), target),
            )
        if cmd in ("prep", "eval"):
            add(
                f"SIGKILL during {cmd}, then rerun",
                "signal",
                acdctool(*argv, "-q"),
                0,
                setup=_previous(target, previous),
                runner=_kill_runner(target),
            )

    # -- training runs: lock, lossless --force, signals, stale leftovers, exact continuation
    run_src = fx["unet0"]
    add(
        "train-seg SIGTERM saves last.pt (143)",
        "train",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 1000, *TINY, "-q"),
        143,
        runner=_train_signal_runner(signal.SIGTERM),
        check=_loads("run/last.pt"),
    )
    add(
        "train-nvae SIGHUP saves last.pt (129)",
        "train",
        acdctool("train-nvae", S, "-o", "run", "--fold", 0, "--epochs", 1000, *NVAE_TINY, "-q"),
        129,
        runner=_train_signal_runner(signal.SIGHUP),
        check=_loads("run/last.pt"),
    )
    add(
        "two train-seg on one run folder",
        "train",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 1000, *TINY, "-q"),
        73,
        runner=_concurrent_runner,
        message="in use by PID",
    )
    add(
        "forced run that fails keeps the old run",
        "train",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 1, "--lr", "1e30", "--force", *TINY, "-q"),
        1,
        setup=copy_in(("run", run_src)),
        protect=("run",),
        message="diverged",
    )
    add(
        "forced run killed before its first checkpoint",
        "train",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 1, "--resume", *TINY),
        0,
        setup=copy_in(("run", run_src)),
        runner=_forced_kill_runner(S),
        message="restored the previous run",
    )
    add(
        "stale lock taken over",
        "train",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 2, "--resume", *TINY),
        0,
        setup=_stale_lock(run_src),
        message="stale lock",
    )
    add(
        "resume with a pickle-free but flipped last.pt",
        "train",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 2, "--resume", *TINY, "-q"),
        65,
        setup=_flipped_run(run_src),
        protect=("run",),
    )
    add(
        "train-seg without --force on a run",
        "train",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 1, *TINY, "-q"),
        73,
        setup=copy_in(("run", run_src)),
        protect=("run",),
    )
    add(
        "resume with other settings",
        "train",
        acdctool("train-seg", S, "-o", "run", "--fold", 0, "--epochs", 2, "--lr", "0.5", "--resume", *TINY, "-q"),
        2,
        setup=copy_in(("run", run_src)),
        protect=("run",),
    )
    # -- the good path still works (no false refusals)
    add(
        "prep -o inside the ACDC root (new file)",
        "good",
        acdctool("prep", "ACDC", "-o", "ACDC/x.h5", "--size", 64, "-q"),
        0,
        setup=copy_in(("ACDC", ACDC)),
    )
    add("eval --baseline", "good", acdctool("eval", REF, "--baseline", SEG, "-o", "rep", "--no-plots", "-q"), 0)
    add("refine --method morph", "good", acdctool("refine", SEG, "--method", "morph", "-o", "r.h5", "-q"), 0)
    # the fixture NVAE trained on the fixture's patients: refine refuses that unless told (exit 65)
    add("refine --nvae", "good", acdctool("refine", SEG, "--nvae", NV, "--allow-seen", "-o", "r.h5", "-q"), 0)
    add("export", "good", acdctool("export", SEG, "--like", ACDC, "-o", "nii", "-q"), 0)
    return cases


# ------------------------------------------------------------ case helpers
def _nan_centre(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a[a.shape[0] // 2, a.shape[1] // 2, a.shape[2] // 2] = np.nan
    return a


def _inf_centre(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a[a.shape[0] // 2, a.shape[1] // 2, 0] = np.inf
    return a


def _nan_corner(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a[0, 0, :] = np.nan
    return a


def _info(p: Path, **fields: str) -> None:
    lines = dict(line.split(":", 1) for line in (p / "Info.cfg").read_text().splitlines() if ":" in line)
    lines.update({k: f" {v}" for k, v in fields.items()})
    (p / "Info.cfg").write_text("".join(f"{k}:{v}\n" for k, v in lines.items()))


def _plain_h5(p: Path) -> Path:
    import h5py

    with h5py.File(p, "w") as h5:
        h5["x"] = np.zeros(3)
    return p


def _retype_index(src: Path, out: Path) -> Path:
    import h5py

    shutil.copy(src, out)
    with h5py.File(out, "r+") as h5:
        n = h5["index/slice"].shape[0]
        del h5["index/slice"]
        h5["index"].create_dataset("slice", data=np.array(["x"] * n, dtype=object), dtype=h5py.string_dtype())
    return out


def _as_schema_1(raw: dict) -> None:
    raw["schema_version"] = 1
    raw.pop("weights_sha256", None)


def _evil_setup(legit: Path) -> Callable[[Path], None]:
    return lambda w: evil_files(w, w / "PWNED", legit) and None


def _evil_run(run_src: Path, legit: Path) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        shutil.copytree(run_src, w / "run")
        shutil.copy(evil_files(w, w / "PWNED", legit)["nested"], w / "run" / "last.pt")

    return setup


def _flipped_run(run_src: Path) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        shutil.copytree(run_src, w / "run")

        def flip(raw: dict) -> None:
            key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point() and v.numel() > 4)
            raw["state_dict"][key] = raw["state_dict"][key].contiguous()
            raw["state_dict"][key].view(-1)[1] += 1.0

        edit_checkpoint(run_src / "last.pt", w / "run" / "last.pt", flip, rehash=False)

    return setup


def _stale_lock(run_src: Path) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        from acdctool.io.locks import HOST

        shutil.copytree(run_src, w / "run")
        dead = subprocess.Popen(["true"])
        dead.wait()
        (w / "run" / ".lock").write_text(json.dumps({"pid": dead.pid, "host": HOST, "locked_at": time.time()}))

    return setup


def _previous(target: str, previous: Path | None) -> Callable[[Path], None]:
    """A previous output at ``target`` (a file, or a folder with a marker), which must survive."""

    def setup(w: Path) -> None:
        if previous is not None:
            shutil.copy(previous, w / target)
        else:
            (w / target).mkdir()
            (w / target / "previous.txt").write_text("the previous output")

    return setup


def _no_output(*names: str) -> Callable[[Path, subprocess.CompletedProcess], list[str]]:
    def check(w: Path, res: subprocess.CompletedProcess) -> list[str]:
        return [f"output {n} was written" for n in names if (w / n).exists()]

    return check


def _loads(rel: str) -> Callable[[Path, subprocess.CompletedProcess], list[str]]:
    def check(w: Path, res: subprocess.CompletedProcess) -> list[str]:
        from acdctool.io.checkpoint import load_checkpoint

        try:
            load_checkpoint(w / rel)
        except Exception as exc:  # noqa: BLE001
            return [f"{rel} does not load: {exc}"]
        return []

    return check


def _tmpfs(size: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        (w / "full").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(w / "full")], check=True)

    return setup


def _tmpfs_empty(w: Path, res: subprocess.CompletedProcess) -> list[str]:
    left = sorted(p.name for p in (w / "full").iterdir())
    return [f"left on the full disk: {left}"] if left else []


# ------------------------------------------------------------------ runners
def _popen(argv: list[str], w: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=w, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _temp_of(w: Path, target: str) -> Callable[[], bool]:
    folder, name = (w / target).parent, Path(target).name
    return lambda: any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in os.listdir(folder))


def _finish(proc: subprocess.Popen, argv: list[str], missed: bool = False) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    res.missed = missed  # type: ignore[attr-defined]
    res.session = proc.pid  # type: ignore[attr-defined]
    return res


def _signal_runner(sig: int, target: str) -> Callable[[Case, Path], subprocess.CompletedProcess]:
    def run(case: Case, w: Path) -> subprocess.CompletedProcess:
        argv = case.argv(w) if callable(case.argv) else case.argv
        proc = _popen(argv, w)
        hit = _wait(_temp_of(w, target), proc)
        if hit:
            time.sleep(0.3)  # well inside the work
            proc.send_signal(sig)
        return _finish(proc, argv, missed=not hit)

    return run


def _kill_runner(target: str) -> Callable[[Case, Path], subprocess.CompletedProcess]:
    """SIGKILL leaves a temp (nothing can clean it); the rerun must succeed and remove it."""

    def run(case: Case, w: Path) -> subprocess.CompletedProcess:
        argv = case.argv(w) if callable(case.argv) else case.argv
        proc = _popen(argv, w)
        hit = _wait(_temp_of(w, target), proc)
        if hit:
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        folder = (w / target).parent
        left = [n for n in os.listdir(folder) if TEMP_RE.match(n)]
        res = subprocess.run(argv, cwd=w, env=ENV, capture_output=True, text=True, timeout=600)
        res.missed = not hit or not left  # type: ignore[attr-defined]
        return res

    return run


def _train_signal_runner(sig: int) -> Callable[[Case, Path], subprocess.CompletedProcess]:
    def run(case: Case, w: Path) -> subprocess.CompletedProcess:
        argv = case.argv(w) if callable(case.argv) else case.argv
        proc = _popen(argv, w)
        hit = _wait(lambda: (w / "run" / "metrics.csv").exists(), proc, timeout=300)
        if hit:
            proc.send_signal(sig)
        return _finish(proc, argv, missed=not hit)

    return run


def _concurrent_runner(case: Case, w: Path) -> subprocess.CompletedProcess:
    """A second process on the run folder of a running one is refused; the first is unharmed."""
    argv = case.argv(w) if callable(case.argv) else case.argv
    first = _popen(argv, w)
    hit = _wait(lambda: (w / "run" / "metrics.csv").exists(), first, timeout=300)
    second = subprocess.run(argv, cwd=w, env=ENV, capture_output=True, text=True, timeout=600)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
    second.missed = not hit  # type: ignore[attr-defined]
    second.extra_problems = [] if first.returncode == 143 else [f"first run exited {first.returncode}: {err[-300:]}"]  # type: ignore[attr-defined]
    return second


def _forced_kill_runner(slices: Path) -> Callable[[Case, Path], subprocess.CompletedProcess]:
    """kill -9 a forced run after it set the old run aside, before its first checkpoint; the next
    command on the folder (the case's) puts the old run back."""

    def run(case: Case, w: Path) -> subprocess.CompletedProcess:
        before = _hash(w / "run")
        argv = acdctool("train-seg", slices, "-o", "run", "--fold", 0, "--epochs", 1000, "--force", *TINY, "-q")
        proc = _popen(argv, w)
        hit = _wait(lambda: (w / "run" / ".previous-run").exists(), proc, timeout=300)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        hit = hit and not (w / "run" / "last.pt").exists()
        case_argv = case.argv(w) if callable(case.argv) else case.argv
        res = subprocess.run(case_argv, cwd=w, env=ENV, capture_output=True, text=True, timeout=600)
        res.missed = not hit  # type: ignore[attr-defined]
        problems = []
        if _hash(w / "run") != before:
            problems.append("the old run was not restored intact")
        res.extra_problems = problems  # type: ignore[attr-defined]
        return res

    return run


# ------------------------------------------------------------------- checks
def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    if not path.exists() and not path.is_symlink():
        return "absent"
    if path.is_file():
        digest.update(path.read_bytes())
        return digest.hexdigest()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not TEMP_RE.match(p.name):
            digest.update(str(p.relative_to(path)).encode())
            digest.update(p.read_bytes())
    return digest.hexdigest()


def _leftovers(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        if not root.exists():
            continue
        for p in root.rglob("*"):
            if TEMP_RE.match(p.name) or p.name in (".previous-run", ".lock"):
                found.append(str(p))
    return found


def _session_alive(session: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != "Z":  # field 6 of stat: session id
            pids.append(int(entry.name))
    return pids


def run_case(case: Case, w: Path, fixtures: Path, fixture_hash: str) -> Outcome:
    w.mkdir(parents=True)
    if case.setup is not None:
        case.setup(w)
    protected = {p: _hash(w / p) for p in case.protect}
    argv = case.argv(w) if callable(case.argv) else case.argv
    t0 = time.time()
    try:
        if case.runner is not None:
            res = case.runner(case, w)
        else:
            res = subprocess.run(argv, cwd=w, env=ENV, capture_output=True, text=True, timeout=600)
    finally:
        if (w / "full").is_mount():
            subprocess.run(["umount", str(w / "full")], check=False)
    out = Outcome(case, res.returncode, seconds=time.time() - t0, stderr=res.stderr)
    err = res.stderr
    if "Traceback (most recent call last)" in err or "Exception ignored" in err or res.returncode < 0:
        out.flags.add("traceback")
    if "unexpected" in err and res.returncode == 1:
        out.flags.add("unexpected")
    if res.returncode not in case.expect:
        out.problems.append(f"exit {res.returncode}, expected {' or '.join(map(str, case.expect))}")
    if case.group != "good" and res.returncode == 0 and 0 not in case.expect:
        out.flags.add("silent accept")
    if getattr(res, "missed", False):
        out.flags.add("signal missed")
    for rel, before in protected.items():
        if _hash(w / rel) != before:
            out.flags.add("damaged")
            out.problems.append(f"{rel} changed")
    if _hash(fixtures) != fixture_hash:
        out.flags.add("damaged")
        out.problems.append("a shared fixture changed")
    left = _leftovers(w, fixtures)
    if left:
        out.flags.add("leftover")
        out.problems.append(f"left behind: {', '.join(left[:3])}")
    if (w / "PWNED").exists():
        out.flags.add("pickle executed")
    session = getattr(res, "session", None)
    if session is not None:
        deadline = time.time() + 3
        while _session_alive(session) and time.time() < deadline:
            time.sleep(0.05)
        if _session_alive(session):
            out.flags.add("orphan workers")
    if case.message and case.message not in err:
        out.problems.append(f"stderr lacks {case.message!r}")
    if res.returncode not in (0,) and "error" in err:
        error_lines = [line for line in err.splitlines() if "error" in line.lower()]
        if len(error_lines) > 1:
            out.problems.append(f"{len(error_lines)} error lines")
    out.problems += getattr(res, "extra_problems", [])
    if case.check is not None:
        out.problems += case.check(w, res)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="run the cases whose name contains this")
    ap.add_argument("--keep", type=Path, help="build fixtures and case folders here and keep them")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="acdctool-reliability-"))
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    fixtures = base / "fixtures"
    if not (fixtures / "seg3.h5").exists():
        shutil.rmtree(fixtures, ignore_errors=True)
        fx = build_fixtures(fixtures)
    else:
        fx = _fixture_paths(fixtures)
    print(f"fixtures ready in {time.time() - t0:.0f} s ({fixtures})", flush=True)
    cases = [c for c in make_cases(fx) if not args.only or args.only in c.name]
    root = os.geteuid() == 0 and _can_mount(base)
    fixture_hash = _hash(fixtures)
    outcomes: list[Outcome] = []
    skipped = 0
    for i, case in enumerate(cases):
        if case.needs_root and not root:
            skipped += 1
            continue
        w = base / "cases" / f"{i:03d}"
        shutil.rmtree(w, ignore_errors=True)
        o = run_case(case, w, fixtures, fixture_hash)
        outcomes.append(o)
        bad = o.problems or (o.flags - {"signal missed"})
        if args.verbose or bad:
            mark = "FAIL" if bad else "ok  "
            print(f"{mark} {case.group:8s} {case.name}  [exit {o.code}, {o.seconds:.1f} s]", flush=True)
            for p in [*o.problems, *sorted(o.flags)]:
                print(f"       {p}")
            if bad:
                print("       stderr: " + " | ".join(o.stderr.strip().splitlines()[-3:])[:400])
        if not args.keep:
            shutil.rmtree(w, ignore_errors=True)
    flags = Counter(f for o in outcomes for f in o.flags)
    groups = Counter(o.case.group for o in outcomes)
    failed = [o for o in outcomes if o.problems or (o.flags - {"signal missed"})]
    print()
    print(
        f"cases {len(outcomes)} ({', '.join(f'{k} {v}' for k, v in sorted(groups.items()))})"
        + (f"; {skipped} skipped (need root for a tmpfs)" if skipped else "")
    )
    print(f"expected exit status: {sum(o.code in o.case.expect for o in outcomes)}/{len(outcomes)}")
    labels = {
        "traceback": "tracebacks",
        "unexpected": "unexpected",
        "damaged": "damaged outputs",
        "leftover": "leftovers",
        "silent accept": "silent accepts",
        "pickle executed": "pickle executions",
        "orphan workers": "orphan workers",
    }
    for key, label in labels.items():
        print(f"{label:18s} {flags.get(key, 0)}")
    print(f"{'signals missed':18s} {flags.get('signal missed', 0)} (the command finished before the signal)")
    print(f"failed cases       {len(failed)}")
    print(f"time               {time.time() - t0:.0f} s")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


def _fixture_paths(root: Path) -> dict[str, Path]:
    return {
        "acdc": root / "ACDC",
        "big": root / "ACDC12",
        "slices": root / "slices.h5",
        "big_slices": root / "big.h5",
        "unet0": root / "runs" / "unet-f0",
        "unet1": root / "runs" / "unet-f1",
        "seg": root / "seg.h5",
        "nvae": root / "runs" / "nvae",
        "refined": root / "refined.h5",
        "seg3": root / "seg3.h5",
        "big_seg": root / "big_seg.h5",
    }


def _can_mount(base: Path) -> bool:
    probe = base / "mount-probe"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe)], capture_output=True).returncode
    if ok == 0:
        subprocess.run(["umount", str(probe)], check=False)
    probe.rmdir()
    return ok == 0


if __name__ == "__main__":
    sys.exit(main())
