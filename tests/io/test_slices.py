from __future__ import annotations

import h5py
import numpy as np
import pytest

from acdctool.errors import BadInputError, FileKindError, InputMissingError, OutputError, SchemaVersionError
from acdctool.io.slices import INDEX_COLUMNS, SCHEMA_VERSION, SliceFile, SliceWriter


def _rows(n, patient="patient001"):
    base = {c: 0 for c in INDEX_COLUMNS}
    base.update(
        patient=patient,
        group="NOR",
        phase="ED",
        split="train",
        model="",
        n_slices=n,
        spacing_row=1.5,
        spacing_col=1.25,
        thickness=10.0,
        crop_size=100,
    )
    return [dict(base, slice=i) for i in range(n)]


def _write(path, n=3, force=False, kind="prep"):
    rng = np.random.default_rng(0)
    img = rng.random((n, 8, 8), dtype=np.float32)
    gt = rng.integers(0, 4, (n, 8, 8), dtype=np.uint8)
    with SliceWriter(
        path,
        kind=kind,
        config={"size": 8},
        provenance={"command": "test"},
        shape=(8, 8),
        arrays={"image": ("float32", ()), "gt": ("uint8", ())},
        force=force,
    ) as w:
        w.append(_rows(n), image=img, gt=gt)
    return img, gt


def test_round_trip_arrays_index_and_attrs(tmp_path):
    path = tmp_path / "a.h5"
    img, gt = _write(path, n=4)
    with SliceFile(path) as f:
        assert len(f) == 4 and f.shape == (8, 8) and f.kind == "prep"
        np.testing.assert_array_equal(f.read("image"), img)
        np.testing.assert_array_equal(f.read("gt", [3, 0, 3]), gt[[3, 0, 3]])
        assert list(f.index.columns) == list(INDEX_COLUMNS)
        assert f.index.patient.tolist() == ["patient001"] * 4
        assert f.index.slice.tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(f.spacing()[0], [1.5, 1.25])
        assert f.config == {"size": 8} and f.provenance["command"] == "test"
        assert f.attrs["schema_version"] == SCHEMA_VERSION
    with h5py.File(path) as h5:  # one slice per chunk, compressed
        assert h5["image"].chunks == (1, 8, 8) and h5["image"].compression == "gzip"


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "a.h5"
    with pytest.raises(RuntimeError):
        with SliceWriter(
            path, kind="prep", config={}, provenance={}, shape=(8, 8), arrays={"image": ("float32", ())}
        ) as w:
            w.append(_rows(1), image=np.zeros((1, 8, 8), np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_output_unless_force(tmp_path):
    path = tmp_path / "a.h5"
    _write(path)
    with pytest.raises(OutputError, match="already exists"):
        _write(path)
    img, _ = _write(path, n=2, force=True)
    with SliceFile(path) as f:
        assert len(f) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_open_rejects_wrong_files(tmp_path):
    with pytest.raises(InputMissingError):
        SliceFile(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(FileKindError, match="not an HDF5"):
        SliceFile(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = 1
    with pytest.raises(FileKindError, match="not an acdctool slice file"):
        SliceFile(other)
    path = tmp_path / "a.h5"
    _write(path)
    with pytest.raises(FileKindError, match="'prep' file"):
        SliceFile(path, kinds=("seg",))
    with h5py.File(path, "r+") as h5:
        h5.attrs["schema_version"] = 99
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        SliceFile(path)


def test_inconsistent_rows_rejected(tmp_path):
    path = tmp_path / "a.h5"
    _write(path, n=3)
    with h5py.File(path, "r+") as h5:
        del h5["gt"]
        h5["gt"] = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(BadInputError, match="'gt' has 2 rows"):
        SliceFile(path)


def test_extra_index_columns_round_trip(tmp_path):
    path = tmp_path / "r.h5"
    rows = [dict(r, changed=i % 2, reason="invalid" if i % 2 else "") for i, r in enumerate(_rows(3))]
    with SliceWriter(
        path,
        kind="refined",
        config={},
        provenance={},
        shape=(8, 8),
        arrays={"image": ("float32", ())},
        columns={"changed": "int8", "reason": "str"},
    ) as w:
        w.append(rows, image=np.zeros((3, 8, 8), np.float32))
    with SliceFile(path) as f:
        assert list(f.index.columns)[-2:] == ["changed", "reason"]
        assert f.index.changed.tolist() == [0, 1, 0] and f.index.reason.tolist() == ["", "invalid", ""]


def test_outputs_get_umask_permissions(tmp_path):
    import os

    path = tmp_path / "p.h5"
    _write(path)
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)
