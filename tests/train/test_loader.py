"""Row selection by patient and fold, the batched SliceDataset, and seeded batch augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from acdctool.data.loader import Augment, SliceDataset, collate_batch, one_hot, patient_folds, select_rows
from acdctool.errors import BadInputError
from acdctool.io.slices import SliceFile


def _patients(index, rows):
    return set(index.patient.iloc[rows])


def test_select_rows_by_split_and_fold(tiny_h5):
    with SliceFile(tiny_h5) as f:
        index = f.index
    train, val = select_rows(index, None)
    assert _patients(index, train) == {"patient001", "patient002", "patient003", "patient004"}
    assert _patients(index, val) == {"patient005", "patient006"}
    train, val = select_rows(index, 0)
    assert _patients(index, train) == {"patient002", "patient004"}  # train split, other folds
    assert _patients(index, val) == {"patient001", "patient003", "patient005"}  # all of fold 0
    assert not _patients(index, train) & _patients(index, val)
    with pytest.raises(BadInputError, match="--fold 2 is not a fold.*folds 0..1"):
        select_rows(index, 2)
    with pytest.raises(BadInputError, match="no validation rows"):
        select_rows(index.assign(split=index.split.replace("val", "train")), None)
    assert patient_folds(index)["patient007"] == -1


def test_dataset_batches(tiny_h5):
    ds = SliceDataset(tiny_h5, [0, 5, 7], arrays=("image", "gt"))
    b = ds.__getitems__([2, 0])
    assert b["image"].shape == (2, 1, 64, 64) and b["image"].dtype == torch.float32
    assert b["gt"].shape == (2, 64, 64) and b["gt"].dtype == torch.int64
    assert b["row"].tolist() == [7, 0] and b["volume"].tolist() == [2, 0] and ds.n_volumes == 3
    with SliceFile(tiny_h5) as f:
        np.testing.assert_array_equal(b["gt"].numpy(), f.read("gt", [7, 0]))
    lazy = pickle.loads(pickle.dumps(SliceDataset(tiny_h5, [0, 5, 7], in_memory=False)))  # as a worker gets it
    assert all(torch.equal(lazy.__getitems__([2, 0])[k], b[k]) for k in b)
    oh = SliceDataset(tiny_h5, [0], arrays=("gt",), one_hot=("gt",))[0]["gt"]
    assert oh.shape == (4, 64, 64) and torch.equal(oh.argmax(0), b["gt"][1])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_batch)
    assert [len(x["row"]) for x in loader] == [2, 1]


def test_dataset_without_masks_is_an_error(slices_factory, tmp_path):
    path = slices_factory(tmp_path / "nogt.h5", with_gt=False)
    with pytest.raises(BadInputError, match="no ground-truth masks"):
        SliceDataset(path, arrays=("image", "gt"))


def test_one_hot_context_stack():
    labels = torch.tensor([[[[0, 1], [2, 3]], [[3, 3], [0, 0]]]])  # (1, K=2, 2, 2)
    oh = one_hot(labels)
    assert oh.shape == (1, 8, 2, 2) and torch.equal(oh[:, :4].argmax(1), labels[:, 0])


def test_augment_is_seeded_and_keeps_labels_valid(tiny_h5):
    batch = SliceDataset(tiny_h5).__getitems__(list(range(8)))
    aug = Augment()
    a = aug(batch, torch.Generator().manual_seed(1))
    b = aug(batch, torch.Generator().manual_seed(1))
    c = aug(batch, torch.Generator().manual_seed(2))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["gt"], b["gt"])
    assert not torch.equal(a["image"], c["image"])
    assert a["gt"].dtype == torch.int64 and set(a["gt"].unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(a["row"], batch["row"])


def test_augment_moves_image_and_mask_together(tiny_h5):
    batch = SliceDataset(tiny_h5).__getitems__([0, 1])
    flip_only = Augment(flip=1.0, rotate_deg=0.0, scale=1.0, gamma=1.0, intensity=0.0)
    out = flip_only(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["gt"], batch["gt"].flip(-1).flip(-2))
    torch.testing.assert_close(out["image"], batch["image"].flip(-1).flip(-2))
