"""refine's ``empty`` family: the empty slice for unconfident slices at a stack end, as the last tier."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acdctool.config import RefineConfig
from acdctool.correct.empty import foreground_confidence, stack_ends, unconfident_ends
from acdctool.correct.gate import Candidates, gate
from acdctool.errors import ConfigError
from acdctool.io.slices import SliceFile

SP2 = np.ones((2, 2))


def _fragments(size: int = 40) -> np.ndarray:
    """Two disjoint LV blobs and an RV speck: anatomically invalid, and the kind of debris a
    network draws above the base."""
    m = np.zeros((size, size), np.uint8)
    m[5:10, 5:10] = 3
    m[25:30, 25:30] = 3
    m[15, 30] = 1
    return m


def _nothing_valid(m, ctx):
    out = Candidates()
    out.add(m.copy(), "recon", "recon")  # equal to the input: never taken
    return out


def test_confidence_and_stack_ends(peaked_softmax):
    m = _fragments()
    assert foreground_confidence(m[None], peaked_softmax(m, 0.6)[None]).round(4).tolist() == [0.6]
    # the probability of the mask's own label, not the softmax's maximum
    other = peaked_softmax(np.where(m == 3, 2, m).astype(np.uint8), 0.9)
    # 50 LV pixels at (1 - 0.9) / 3, the RV speck at 0.9
    assert foreground_confidence(m[None], other[None])[0] == pytest.approx((50 * 0.1 / 3 + 0.9) / 51, abs=1e-6)
    assert foreground_confidence(np.zeros((1, 4, 4), np.uint8), np.ones((1, 4, 4, 4)))[0] == 1.0
    with pytest.raises(ValueError, match="probs"):
        foreground_confidence(m[None], peaked_softmax(m)[None, :, :20])
    assert stack_ends(np.array([0, 3, 9, 5]), np.array([10, 10, 10, 6])).tolist() == [True, False, True, True]
    p = np.stack([peaked_softmax(m, 0.6)] * 2)
    assert unconfident_ends(np.stack([m, m]), p, np.array([True, False]), 0.75).tolist() == [True, False]
    assert not unconfident_ends(np.stack([m, m]), p, np.array([True, True]), 0.5).any()  # 0.6 is confident enough
    assert not unconfident_ends(np.stack([m, m]), p, np.array([True, True]), 0.0).any()  # 0: never


def test_gate_empties_only_unconfident_stack_ends_nothing_else_fixed(peaked_softmax):
    bad = _fragments()
    masks = np.stack([bad, bad])
    low = np.stack([peaked_softmax(bad, 0.6)] * 2)
    cfg = RefineConfig(fallback=("empty",))
    ends = np.array([True, False])
    g = gate(masks, None, SP2, _nothing_valid, cfg, probs=low, stack_ends=ends)
    assert g.reasons == ["corrected", "no-valid-candidate"]
    assert g.families == ["empty", ""] and g.names == ["empty", ""]
    assert not g.refined[0].any() and (g.refined[1] == bad).all()
    assert g.valid_out.tolist() == [True, False]
    # a confident segmentation, no softmax, no stack positions, a disallowed row, or the
    # morphological baseline: nothing emptied
    high = np.stack([peaked_softmax(bad, 0.9)] * 2)
    assert gate(masks, None, SP2, _nothing_valid, cfg, probs=high, stack_ends=ends).families == ["", ""]
    assert gate(masks, None, SP2, _nothing_valid, cfg, stack_ends=ends).families == ["", ""]
    assert gate(masks, None, SP2, _nothing_valid, cfg, probs=low).families == ["", ""]
    off = np.array([False, True])
    assert gate(masks, None, SP2, _nothing_valid, cfg, probs=low, stack_ends=ends, fallback_rows=off).families == [
        "",
        "",
    ]
    morph = RefineConfig(method="morph", fallback=("empty",))
    assert gate(masks, None, SP2, _nothing_valid, morph, probs=low, stack_ends=ends).families == ["", ""]
    never = RefineConfig(fallback=("empty",), empty_confidence=0.0)
    assert gate(masks, None, SP2, _nothing_valid, never, probs=low, stack_ends=ends).families == ["", ""]


def test_empty_comes_after_every_other_tier(toy_heart, peaked_softmax):
    """A stack-end slice that the smooth fallback can repair is repaired, not emptied; a valid
    slice is never touched, however unconfident."""
    good = toy_heart()
    bad = good.copy()
    bad[3, 3] = 3  # a stray LV speck: invalid, and its smoothed softmax drops it
    probs = peaked_softmax(bad, 0.6)
    both = RefineConfig(fallback=("smooth", "empty"))
    g = gate(
        np.stack([bad, good]), None, SP2, _nothing_valid, both, probs=np.stack([probs] * 2), stack_ends=np.ones(2, bool)
    )
    assert g.families[0] == "smooth" and g.refined[0].any()
    assert g.reasons[1] == "valid-kept" and (g.refined[1] == good).all()


def test_config_checks():
    with pytest.raises(ConfigError, match="only in --fallback"):
        RefineConfig(candidates=("recon", "empty"))
    with pytest.raises(ConfigError, match="--empty-confidence"):
        RefineConfig(empty_confidence=1.5)
    assert RefineConfig(fallback=("smooth", "empty")).families[-1] == "empty"


def _debris_everywhere(gt, index):
    debris = _fragments(gt.shape[1])
    out = gt.copy()
    out[:, debris > 0] = debris[debris > 0]
    return out


def test_refine_stage_empties_stack_ends_only(
    seg_file_factory, with_probs_factory, nvae_checkpoint_factory, tmp_path, peaked_softmax
):
    """Through the stage, with an untrained NVAE and unconfident debris on every slice: only the
    first and last slices of each stack that stay invalid are emptied, recorded as family
    ``empty``; the output's config says the family was used."""
    from acdctool.stages.refine import Inputs, run

    seg = seg_file_factory(_debris_everywhere)
    withp, arrays = with_probs_factory(
        seg, tmp_path / "seg_p.h5", lambda a: np.stack([peaked_softmax(m, 0.6) for m in a["pred"]])
    )
    nvae = nvae_checkpoint_factory(tmp_path / "nvae.pt", size=arrays["gt"].shape[1])
    out = tmp_path / "out.h5"
    cfg = RefineConfig(candidates=("recon",), fallback=("empty",), fallback_positions=("base", "mid", "apex"))
    result = run(cfg, Inputs(withp, nvae=nvae), out)
    with SliceFile(out) as f:
        stored, idx, refined = json.loads(f.attrs["config"]), f.index, f.read("pred")
    assert stored["empty_used"] is True and stored["fallback"] == ["empty"] and stored["empty_confidence"] == 0.75
    emptied = (idx.refine_family == "empty").to_numpy()
    ends = stack_ends(idx["slice"].to_numpy(), idx["n_slices"].to_numpy())
    assert emptied.any() and not emptied[~ends].any()
    assert not refined[emptied].any()
    assert (refined[~emptied & (idx.refine_reason == "no-valid-candidate").to_numpy()] != 0).any()
    assert result.families.get("empty") == int(emptied.sum())
