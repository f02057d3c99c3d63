"""refine's ``repair`` family: minimal pixel edits of the input, the very last tier, guarded by the softmax."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acdctool.config import RefineConfig
from acdctool.correct.gate import Candidates, gate
from acdctool.correct.repair import agreed_repairs, repair_batch, repair_slice
from acdctool.errors import ConfigError
from acdctool.io.slices import SliceFile
from acdctool.metrics import anatomy

SP = (1.0, 1.0)


def _faults(heart: np.ndarray) -> dict[str, np.ndarray]:
    """Damaged copies of a valid heart, one fault each (all anatomically invalid)."""
    out = {}
    m = heart.copy()
    m[20, 23] = 0  # a hole in the LV
    out["lv hole"] = m
    m = heart.copy()
    m[19:22, 28:32] = 0  # a cut through the MYO: the LV touches the background
    out["myo cut"] = m
    m = heart.copy()
    m[:, 12:14][m[:, 12:14] == 1] = 0  # the RV split in two large fragments
    out["rv split"] = m
    m = heart.copy()
    m[3:6, 35:38] = 3  # a stray LV speck far from the heart
    out["lv speck"] = m
    m = heart.copy()
    rv = m == 1
    m[rv] = 0
    m[:, :-3][rv[:, 3:]] = 1  # the RV moved 3 px away from the MYO
    m[(m == 1) & (np.roll(m, -1, axis=1) == 2)] = 0
    out["rv detached"] = m
    return out


@pytest.mark.parametrize("fault", ["lv hole", "myo cut", "rv split", "lv speck", "rv detached"])
def test_repair_makes_each_fault_valid_with_few_edits(toy_heart, fault):
    heart = toy_heart()
    bad = _faults(heart)[fault]
    assert not anatomy.is_valid(bad, SP)
    fixed = repair_slice(bad, SP)
    assert anatomy.is_valid(fixed, SP)
    changed = int((fixed != bad).sum())
    assert 0 < changed <= 0.06 * int((bad > 0).sum())  # a few pixels, not a redrawn heart
    # every structure keeps most of its pixels: fragments are bridged, not dropped
    for label in (1, 2, 3):
        kept = np.logical_and(fixed == label, bad == label).sum()
        assert kept >= 0.9 * (bad == label).sum() - (9 if fault == "lv speck" else 0)


def test_rv_fragments_are_bridged_not_dropped(toy_heart):
    bad = _faults(toy_heart())["rv split"]
    fixed = repair_slice(bad, SP)
    assert (fixed == 1).sum() >= (bad == 1).sum()  # both pieces kept and joined
    assert anatomy.disconnectivity_in_rv(fixed, SP) == 0


def test_repair_leaves_a_valid_heart_almost_alone_and_batches(toy_heart):
    heart = toy_heart()
    assert int((repair_slice(heart, SP) != heart).sum()) <= 12  # at most the digital circles' hull pixels
    bad = _faults(heart)["myo cut"]
    both = repair_batch(np.stack([bad, heart]), np.ones((2, 2)))
    assert (both[0] == repair_slice(bad, SP)).all() and (both[1] == repair_slice(heart, SP)).all()
    assert repair_batch(np.zeros((0, 8, 8), np.uint8), np.zeros((0, 2))).shape == (0, 8, 8)


def test_agreed_repairs_follow_the_softmax(toy_heart, peaked_softmax):
    heart = toy_heart()
    bad = _faults(heart)["myo cut"]
    masks = np.stack([bad, bad])
    probs = np.stack([peaked_softmax(heart, 0.9), peaked_softmax(bad, 0.9)])  # row 1: the network saw the cut
    fixed, ok = agreed_repairs(masks, probs, np.ones((2, 2)), 1.0)
    assert ok.tolist() == [True, False]  # the repair agrees with row 0's softmax better than the input does
    assert anatomy.is_valid(fixed[1], SP)  # row 1's repair is valid, but refused
    assert agreed_repairs(masks, probs, np.ones((2, 2)), 0.8)[1].tolist() == [True, True]
    # a valid input repairs to a valid mask too, but unchanged rows never count as repaired
    same = np.stack([heart])
    assert agreed_repairs(same, peaked_softmax(heart)[None], np.ones((1, 2)), 0.0)[1].tolist() == [
        bool((repair_slice(heart, SP) != heart).any())
    ]


def _nothing_valid(m, ctx):
    out = Candidates()
    out.add(m.copy(), "recon", "recon")  # equal to the input: never taken
    return out


def test_gate_repairs_last_at_every_position(toy_heart, peaked_softmax):
    heart = toy_heart()
    bad = _faults(heart)["myo cut"]
    masks = np.stack([bad, heart, bad])
    probs = np.stack([peaked_softmax(heart, 0.9)] * 3)
    cfg = RefineConfig(fallback=("repair",))
    # the fallback positions do not bind repair: its guard is the softmax
    g = gate(masks, None, np.ones((3, 2)), _nothing_valid, cfg, probs=probs, fallback_rows=np.zeros(3, bool))
    assert g.reasons == ["corrected", "valid-kept", "corrected"] and g.families == ["repair", "", "repair"]
    assert (g.refined[1] == heart).all() and g.valid_out.all()
    assert (g.refined[0] == repair_slice(bad, SP)).all()
    # no softmax, the morphological baseline, or a softmax that saw the fault at ratio 1: nothing repaired
    assert gate(masks, None, np.ones((3, 2)), _nothing_valid, cfg).families == ["", "", ""]
    morph = RefineConfig(method="morph", fallback=("repair",))
    assert gate(masks, None, np.ones((3, 2)), _nothing_valid, morph, probs=probs).families == ["", "", ""]
    saw = np.stack([peaked_softmax(m, 0.9) for m in masks])
    strict = RefineConfig(fallback=("repair",), repair_agreement=1.0)
    assert gate(masks, None, np.ones((3, 2)), _nothing_valid, strict, probs=saw).families == ["", "", ""]


def test_earlier_tiers_and_empty_come_first(toy_heart, peaked_softmax):
    """A candidate that the first tier can take wins; at an unconfident stack end, empty wins."""
    heart = toy_heart()
    bad = _faults(heart)["myo cut"]
    masks = np.stack([bad, bad])

    def heals(m, ctx):
        out = Candidates()
        out.add(np.stack([heart, m[1]]), "recon", "recon")  # fixes row 0 only
        return out

    probs = np.stack([peaked_softmax(heart, 0.9)] * 2)
    g = gate(masks, None, np.ones((2, 2)), heals, RefineConfig(fallback=("repair",)), probs=probs)
    assert g.families == ["recon", "repair"]
    low = np.stack([peaked_softmax(bad, 0.5)] * 2)
    cfg = RefineConfig(fallback=("empty", "repair"), repair_agreement=0.0)
    g = gate(masks, None, np.ones((2, 2)), _nothing_valid, cfg, probs=low, stack_ends=np.array([True, False]))
    assert g.families == ["empty", "repair"] and not g.refined[0].any()


def test_config_checks():
    assert RefineConfig().fallback[-1] == "repair" and RefineConfig().repair_agreement == 0.8
    with pytest.raises(ConfigError, match="only in --fallback"):
        RefineConfig(candidates=("recon", "repair"))
    with pytest.raises(ConfigError, match="--repair-agreement"):
        RefineConfig(repair_agreement=1.5)
    assert "repair" in RefineConfig().softmax_families
    assert RefineConfig(method="morph").softmax_families == ()


def test_refine_stage_repairs_and_records_it(
    seg_file_factory, with_probs_factory, nvae_checkpoint_factory, tmp_path, peaked_softmax
):
    """Through the stage, with an untrained NVAE (no valid candidate) and a cut MYO on every
    slice with a heart: repaired rows are family ``repair`` and valid; the config records it."""
    from acdctool.stages.refine import Inputs, run

    def cut(gt, index):
        out = gt.copy()
        for m in out:
            lv = np.argwhere(m == 3)
            if len(lv):
                r, c = lv.mean(axis=0).round().astype(int)
                right = c + np.flatnonzero(m[r, c:] == 0)[0] if (m[r, c:] == 0).any() else None
                if right is not None:
                    m[r - 1 : r + 2, c:right] = np.where(m[r - 1 : r + 2, c:right] == 2, 0, m[r - 1 : r + 2, c:right])
        return out

    seg = seg_file_factory(cut)
    withp, arrays = with_probs_factory(  # the network saw the whole MYO
        seg, tmp_path / "seg_p.h5", lambda a: np.stack([peaked_softmax(m, 0.9) for m in a["gt"]])
    )
    nvae = nvae_checkpoint_factory(tmp_path / "nvae.pt", size=arrays["gt"].shape[1])
    out = tmp_path / "out.h5"
    result = run(RefineConfig(candidates=("recon",), fallback=("repair",)), Inputs(withp, nvae=nvae), out)
    with SliceFile(out) as f:
        stored, idx, refined = json.loads(f.attrs["config"]), f.index, f.read("pred")
        spacing = f.spacing()
    assert stored["repair_used"] is True and stored["repair_agreement"] == 0.8 and stored["fallback"] == ["repair"]
    repaired = (idx.refine_family == "repair").to_numpy()
    assert repaired.any() and result.families.get("repair") == int(repaired.sum())
    assert anatomy.evaluate_batch(refined[repaired], spacing[repaired])[1].all()
    assert (refined[repaired] != arrays["pred"][repaired]).any(axis=(1, 2)).all()
    untouched = (idx.refine_reason == "valid-kept").to_numpy()
    assert (refined[untouched] == arrays["pred"][untouched]).all()
