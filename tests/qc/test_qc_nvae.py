"""NVAE for QC: fused inference equals the model, checkpoint checks, held-out assignment, agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acdctool.errors import BadInputError, FileKindError
from acdctool.models.nvae import NVAE
from acdctool.models.nvae_cells import BatchNormSiLU, Conv1x1
from acdctool.models.nvae_io import LoadedNvae, fuse_for_inference, load_nvae, patient_seen
from acdctool.qc.nvae import NvaeBank


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def test_fused_model_reconstructs_like_the_model():
    torch.manual_seed(0)
    model = NVAE(image_size=32, stem_channels=4, scales=2, groups_per_scale=(2, 1), latent_channels=4)
    for m in model.modules():  # non-trivial batch-norm statistics, so folding is really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    fused = fuse_for_inference(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert n_bn < sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, BatchNormSiLU) for m in fused.modules())  # unfused, then folded
    assert any(isinstance(m, Conv1x1) for m in fused.modules())  # 1×1 folds keep their fast path
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (3, 32, 32)), 4).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        ref = model.reconstruct(x)
        got = fused.reconstruct(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_load_refuses_a_3gram_nvae_and_wrong_sizes(tmp_path, qc_nvae_checkpoint):
    p12 = qc_nvae_checkpoint(tmp_path / "n12.pt", fold=None, folds={}, in_channels=12)
    with pytest.raises(BadInputError, match="3-gram NVAE"):
        load_nvae(p12, in_channels=4, image_size=64)
    p4 = qc_nvae_checkpoint(tmp_path / "n4.pt", fold=None, folds={})
    with pytest.raises(BadInputError, match="64×64"):
        load_nvae(p4, in_channels=4, image_size=128)
    loaded = load_nvae(p4, in_channels=4, image_size=64, device="cpu")
    assert loaded.info["sha256"] and loaded.seen("patient001") is None
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FileKindError):
        load_nvae(tmp_path / "x.pt", in_channels=4)


def test_patient_seen_rules():
    data = {"fold": 1, "folds": {"a": 0, "b": 1}}
    assert patient_seen(data, "a") is True and patient_seen(data, "b") is False
    assert patient_seen(data, "elsewhere") is False
    assert patient_seen({"train_patients": ["b"], "fold": 1, "folds": {"b": 1}}, "b") is True
    assert patient_seen({"fold": None, "folds": {"a": 0}}, "a") is None


def _fake(data, model=None):
    return LoadedNvae(model=model, device=torch.device("cpu"), info={"path": str(id(data))}, data=data)


def test_assignment_prefers_a_checkpoint_that_never_saw_the_patient():
    folds = {"a": 0, "b": 1, "c": 2}
    bank = NvaeBank([_fake({"fold": k, "folds": folds}) for k in (0, 1)])
    a = bank.assign(["a", "a", "b", "c", "z"])
    # c (fold 2) was seen by both fold models; z was in no training file
    assert a.model.tolist() == [0, 0, 1, 0, 0]
    assert a.held_out.tolist() == ["yes", "yes", "yes", "no", "yes"]
    unknown = NvaeBank([_fake({})]).assign(["a"])
    assert unknown.held_out.tolist() == ["unknown"]


class _Oracle(torch.nn.Module):
    """A 'shape model' that always reconstructs the same clean mask, whatever it is shown."""

    def __init__(self, clean: np.ndarray):
        super().__init__()
        self.clean = torch.from_numpy(clean).long()

    def reconstruct(self, x, mode="mean"):
        oh = torch.nn.functional.one_hot(self.clean, 4).permute(2, 0, 1).float() * 10
        return oh.expand(x.shape[0], -1, -1, -1)


def test_corrupted_mask_agrees_less_with_the_shape_model():
    from acdctool.qc.signals import nvae_signals

    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    clean = np.zeros((32, 32), np.uint8)
    clean[r < 10] = 2
    clean[r < 6] = 3
    blob = clean.copy()
    blob[1:5, 1:5] = 3
    eroded = clean.copy()
    eroded[(r >= 8) & (r < 10)] = 0
    bank = NvaeBank([_fake({}, _Oracle(clean))])
    masks = np.stack([clean, blob, eroded])
    recon, logp = bank.agreement(0, masks)
    s = nvae_signals(masks, recon, logp)
    assert s["nvae_dice_mean"][0] == 1.0
    assert s["nvae_dice_mean"][1] < 1.0 and s["nvae_dice_mean"][2] < 1.0
    assert s["nvae_nll"][0] < s["nvae_nll"][1] and s["nvae_nll"][0] < s["nvae_nll"][2]
