"""Self-describing checkpoints: round trip with weights_only, and each kind of bad file."""

from __future__ import annotations

import fractions

import pytest
import torch

from acdctool.errors import BadInputError, FileKindError, InputMissingError, SchemaVersionError
from acdctool.io.checkpoint import SCHEMA_VERSION, file_sha256, load_checkpoint, save_checkpoint


def _save(path, kind="seg-model"):
    return save_checkpoint(
        path,
        kind=kind,
        model_name="unet",
        model_args={"channels": (4, 8)},
        state_dict={"w": torch.arange(3.0)},
        config={"lr": 1e-3},
        data={"fold": 1, "sha256": "x"},
        metrics={"epoch": 2},
        train={"epoch": 2, "rng": {"torch": torch.get_rng_state()}},
    )


def test_round_trip(tmp_path):
    path = _save(tmp_path / "a.pt")
    ck = load_checkpoint(path, kinds=["seg-model"])
    assert ck.kind == "seg-model" and ck.model_name == "unet" and tuple(ck.model_args["channels"]) == (4, 8)
    assert torch.equal(ck.state_dict["w"], torch.arange(3.0)) and ck.fold == 1 and ck.metrics["epoch"] == 2
    assert ck.versions["torch"] == torch.__version__.split("+")[0] or ck.versions["torch"].startswith(
        torch.__version__[:4]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp file left


def test_wrong_kind_and_version(tmp_path):
    path = _save(tmp_path / "n.pt", kind="nvae-model")
    with pytest.raises(FileKindError, match="'nvae-model' checkpoint, expected 'seg-model'"):
        load_checkpoint(path, kinds=["seg-model"])
    obj = torch.load(path, weights_only=True)
    obj["schema_version"] = SCHEMA_VERSION + 1
    torch.save(obj, tmp_path / "v.pt")
    with pytest.raises(SchemaVersionError, match="schema version"):
        load_checkpoint(tmp_path / "v.pt")


def test_truncated_foreign_and_missing(tmp_path):
    path = _save(tmp_path / "a.pt")
    data = path.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "t.pt")
    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(FileKindError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "x.h5")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(FileKindError, match="not an acdctool checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"x": fractions.Fraction(1, 3)}, tmp_path / "code.pt")  # a pickled class: refused, never run
    with pytest.raises(FileKindError, match="weights_only"):
        load_checkpoint(tmp_path / "code.pt")
    with pytest.raises(InputMissingError):
        load_checkpoint(tmp_path / "nope.pt")


def test_file_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
