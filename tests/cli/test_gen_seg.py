"""`acdctool gen-seg` through the CLI: out-of-fold assignment, output content, and bad checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from acdctool.cli.app import app
from acdctool.io.checkpoint import load_checkpoint, save_checkpoint
from acdctool.io.slices import SliceFile

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny nets on one thread (fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def slices(seg_slices):
    return seg_slices


@pytest.fixture(scope="module")
def ckpts(slices, tiny_seg_args, tmp_path_factory):
    """best.pt of unet and attunet for folds 0 and 1 (2 tiny epochs each)."""
    root = tmp_path_factory.mktemp("genseg-runs")
    out = {}
    for arch in ("unet", "attunet"):
        for fold in (0, 1):
            run = root / f"{arch}-f{fold}"
            res = invoke("train-seg", slices, "-o", run, "--arch", arch, "--fold", fold, "--epochs", 2, *tiny_seg_args)
            assert res.exit_code == 0, res.output
            out[arch, fold] = run / "best.pt"
    return out


def test_out_of_fold_segmentation_of_every_slice(slices, ckpts, tmp_path):
    out = tmp_path / "seg.h5"
    res = invoke("gen-seg", slices, *[a for p in ckpts.values() for a in ("--model", p)], "-o", out, "--save-probs")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    with SliceFile(slices) as src, SliceFile(out) as seg:
        n, idx_in = len(src), src.index
        assert seg.kind == "seg" and len(seg) == 2 * n  # every slice × 2 models
        idx = seg.index
        assert sorted(idx.model.unique()) == ["attunet", "unet"]
        for name in ("attunet", "unet"):
            part = idx[idx.model == name].drop(columns="model").reset_index(drop=True)
            assert part.equals(idx_in.drop(columns="model"))  # full index kept, file order
        np.testing.assert_array_equal(seg.read("gt")[:n], src.read("gt"))
        np.testing.assert_array_equal(seg.read("image")[n:], src.read("image"))
        pred, probs = seg.read("pred"), seg.read("probs")
        assert pred.dtype == np.uint8 and pred.max() <= 3
        assert probs.dtype == np.float16 and probs.shape == (2 * n, 4, 64, 64)
        np.testing.assert_allclose(probs.astype(np.float32).sum(1), 1, atol=1e-2)
        assert (probs.argmax(1) == pred).mean() > 0.99  # float16 rounding may flip near-ties
        assignment = json.loads(seg.attrs["assignment"])
        assert seg.config["_config"] == "GenSegConfig"
    folds = dict(zip(idx_in.patient, idx_in.fold, strict=False))
    trained = {key: set(load_checkpoint(p).data["train_patients"]) for key, p in ckpts.items()}
    for name in ("attunet", "unet"):
        assert set(assignment[name]) == set(folds)
        for patient, used in assignment[name].items():
            assert used == ([folds[patient]] if folds[patient] >= 0 else [0, 1])
            assert all(patient not in trained[name, k] for k in used)  # never predicted by its trainer


def test_only_fold0_model_skips_fold1_patients(slices, ckpts, tmp_path):
    out = tmp_path / "seg.h5"
    res = invoke("gen-seg", slices, "-m", ckpts["unet", 0], "-o", out)
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output
    with SliceFile(slices) as src, SliceFile(out) as seg:
        expected = int((src.index.fold != 1).sum())
        assert len(seg) == expected and set(seg.index.fold) == {0, -1} and not seg.has("probs")


def _tamper(src, dst, **changes):
    ck = load_checkpoint(src)
    fields = dict(
        kind=ck.kind,
        model_name=ck.model_name,
        model_args=ck.model_args,
        state_dict=ck.state_dict,
        config=ck.config,
        data=ck.data,
        metrics=ck.metrics,
        train=None,
    )
    fields.update(changes)
    return save_checkpoint(dst, **fields)


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("truncated", 65, "truncated or corrupt"),
        ("nvae", 65, "'nvae-model' checkpoint, expected 'seg-model'"),
        ("version", 65, "schema version 99"),
        ("fold-map", 65, "out-of-fold predictions are not guaranteed"),
        ("duplicate", 65, "two unet checkpoints for fold 0"),
        ("weights", 65, "weights do not fit"),
        ("exists", 73, "already exists"),
        ("cuda", 2, "no CUDA device"),
    ],
)
def test_bad_checkpoints_write_nothing(slices, ckpts, tmp_path, case, code, message):
    good = ckpts["unet", 0]
    models, out, extra = [good], tmp_path / "seg.h5", []
    bad = tmp_path / "bad.pt"
    if case == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 3])
        models = [bad]
    elif case == "nvae":
        models = [_tamper(good, bad, kind="nvae-model")]
    elif case == "version":
        obj = torch.load(good, weights_only=True)
        obj["schema_version"] = 99
        torch.save(obj, bad)
        models = [bad]
    elif case == "fold-map":
        ck = load_checkpoint(good)
        patient = next(p for p, f in ck.data["folds"].items() if f == 0)
        models = [_tamper(good, bad, data={**ck.data, "folds": {**ck.data["folds"], patient: 1}})]
    elif case == "duplicate":
        models = [good, good]
    elif case == "weights":
        ck = load_checkpoint(good)
        models = [_tamper(good, bad, model_args={**ck.model_args, "channels": (8, 16, 32)})]
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra = ["--device", "cuda"]
    res = invoke("gen-seg", slices, *[a for m in models for a in ("-m", m)], "-o", out, *extra)
    assert res.exit_code == code, res.output
    assert message in res.output
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".seg.h5")]  # no temp file left
