"""refine's ``smooth`` family (the segmentation's softmax smoothed) and the fallback's slice positions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acdctool.config import RefineConfig
from acdctool.conventions import POSITIONS, slice_position
from acdctool.correct.gate import Candidates, gate
from acdctool.correct.smooth import smoothed_candidates
from acdctool.errors import ConfigError
from acdctool.io.slices import SliceFile
from acdctool.metrics import anatomy
from acdctool.report.tables import position

SP = (1.0, 1.0)


def _broken(good):
    """The heart with a notch of background cut through the MYO ring (LV touches background)
    and a stray LV speck outside: anatomically invalid, and no clean-up of the hard mask alone
    can close the ring."""
    m = good.copy()
    m[19:22, 29:33] = 0
    m[3, 3] = 3
    return m


def test_smoothing_repairs_what_the_argmax_breaks(toy_heart, peaked_softmax):
    good = toy_heart()
    bad = _broken(good)
    probs = peaked_softmax(good)
    probs[:, bad != good] = peaked_softmax(bad)[:, bad != good] * 0.55 + probs[:, bad != good] * 0.45
    assert (probs.argmax(0) == bad).all() and not anatomy.is_valid(bad, SP)  # the hard mask is broken
    cands = smoothed_candidates(probs[None], [1.0, 2.0])
    assert [c.shape for c in cands] == [(1, 40, 40)] * 2 and all(c.dtype == np.uint8 for c in cands)
    valid = anatomy.evaluate_batch(np.concatenate(cands), SP)[1]
    assert valid.any(), "some σ closes the ring and drops the speck"
    best = cands[int(np.argmax(valid))][0]
    assert best[3, 3] == 0 and (best == 3).sum() > 0.8 * (good == 3).sum()
    with pytest.raises(ValueError, match="sigmas"):
        smoothed_candidates(probs[None], [0.0])
    with pytest.raises(ValueError, match="probs"):
        smoothed_candidates(probs, [1.0])


def test_gate_offers_smooth_as_a_fallback_only_with_probs_and_where_allowed(toy_heart, peaked_softmax):
    good = toy_heart()
    bad = _broken(good)
    probs = peaked_softmax(good)
    probs[:, bad != good] = peaked_softmax(bad)[:, bad != good] * 0.55 + probs[:, bad != good] * 0.45
    masks, p = np.stack([bad, bad]), np.stack([probs, probs])

    def nothing_valid(m, ctx):  # a first tier that cannot make the slice valid
        out = Candidates()
        out.add(m.copy(), "recon", "recon")
        return out

    assert RefineConfig().fallback == ("smooth", "empty", "repair") and "mid" not in RefineConfig().fallback_positions
    cfg = RefineConfig(fallback=("smooth", "empty"))  # repair ignores the positions (test_refine_repair)
    g = gate(masks, None, np.ones((2, 2)), nothing_valid, cfg, probs=p)
    assert g.reasons == ["corrected", "corrected"] and set(g.families) == {"smooth"}
    assert g.valid_out.all() and g.names[0].startswith("smooth ")
    # no softmax: the family is skipped, the input kept
    g = gate(masks, None, np.ones((2, 2)), nothing_valid, cfg)
    assert g.reasons == ["no-valid-candidate"] * 2 and (g.refined == masks).all()
    # only the rows the fallback may correct
    g = gate(masks, None, np.ones((2, 2)), nothing_valid, cfg, probs=p, fallback_rows=np.array([False, True]))
    assert g.reasons == ["no-valid-candidate", "corrected"] and (g.refined[0] == bad).all()
    # the morphological baseline stays the clean-up alone
    g = gate(masks, None, np.ones((2, 2)), nothing_valid, RefineConfig(method="morph"), probs=p)
    assert g.reasons == ["no-valid-candidate"] * 2
    # in the first tier it competes with (and here beats) the NVAE's candidates
    first = RefineConfig(candidates=("recon", "smooth"), fallback=())
    assert gate(masks, None, np.ones((2, 2)), nothing_valid, first, probs=p).families == ["smooth", "smooth"]


def test_fallback_never_touches_a_first_tier_correction(toy_heart, peaked_softmax):
    good = toy_heart()
    bad = _broken(good)
    probs = peaked_softmax(bad)

    def fixes_it(m, ctx):
        out = Candidates()
        out.add(np.stack([good] * len(m)), "recon", "recon")
        return out

    g = gate(bad[None], None, np.ones((1, 2)), fixes_it, RefineConfig(), probs=probs[None])
    assert g.families == ["recon"] and (g.refined[0] == good).all()


def test_positions_and_config_checks():
    assert [slice_position(i, 9) for i in (0, 2, 3, 5, 6, 8)] == ["base", "base", "mid", "mid", "apex", "apex"]
    import pandas as pd

    s, n = pd.Series([0, 1, 2, 3, 4, 5, 6]), pd.Series([7] * 7)
    assert position(s, n).tolist() == [slice_position(i, 7) for i in range(7)]  # one convention
    assert set(POSITIONS) == {"base", "mid", "apex"}
    with pytest.raises(ConfigError, match="--fallback-positions"):
        RefineConfig(fallback_positions=("middle",))
    with pytest.raises(ConfigError, match="--smooth"):
        RefineConfig(smooth=(0.0,))


def _stray_blob(gt, index):
    for i in range(len(gt)):
        if gt[i].any():
            gt[i, 1:4, 1:4] = 3  # a stray LV fragment: invalid
    return gt


def test_refine_stage_records_smooth_and_skips_mid_slices(
    seg_file_factory, with_probs_factory, nvae_checkpoint_factory, tmp_path, peaked_softmax
):
    """Through the stage, with an untrained NVAE whose candidates cannot fix anything: the
    smooth fallback corrects base and apex slices from the softmax, never mid ones, and only
    when the file has probs (``smooth_used``)."""
    from acdctool.stages.refine import Inputs, run

    seg = seg_file_factory(_stray_blob)

    def probs_of(arrays):
        probs = np.stack([peaked_softmax(m, 0.7) for m in arrays["gt"]])
        has = arrays["gt"].reshape(len(probs), -1).any(axis=1)
        probs[has, :, 1:4, 1:4] = np.array([0.3, 0.0, 0.0, 0.7], np.float32)[None, :, None, None]
        assert (probs.argmax(1) == arrays["pred"]).all()
        return probs

    withp, arrays = with_probs_factory(seg, tmp_path / "seg_p.h5", probs_of)
    nvae = nvae_checkpoint_factory(tmp_path / "nvae.pt", size=arrays["gt"].shape[1])
    for src, used in ((seg, False), (withp, True)):
        out = tmp_path / f"out_{used}.h5"
        run(RefineConfig(candidates=("recon",)), Inputs(src, nvae=nvae), out)
        with SliceFile(out) as f:
            cfg, idx, refined = json.loads(f.attrs["config"]), f.index, f.read("pred")
        assert cfg["smooth_used"] is used and cfg["fallback_positions"] == ["base", "apex"]
        pos = position(idx["slice"], idx["n_slices"]).to_numpy()
        smooth = (idx.refine_family == "smooth").to_numpy()
        assert not smooth[pos == "mid"].any()
        if used:
            assert smooth[pos != "mid"].sum() > 0  # the fallback corrected base/apex slices
            assert (refined[smooth][:, 1:4, 1:4] == 0).all()  # without the stray blob
        else:
            assert not smooth.any()
