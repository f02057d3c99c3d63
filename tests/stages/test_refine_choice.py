"""refine's choice and minimal edits: probability scores, per-structure edits, NVAE assignment, latent steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acdctool.config import RefineConfig
from acdctool.correct.gate import Candidates, closest_valid, gate
from acdctool.correct.patients import SEEN, UNKNOWN, UNSEEN, ModelPatients
from acdctool.correct.scores import PROB_FLOOR, Scorer
from acdctool.correct.structure import CRITERION_STRUCTURES, failing_structures, structure_edits
from acdctool.errors import BadInputError, ConfigError
from acdctool.metrics import anatomy, overlap
from acdctool.stages.refine.assign import assign

SP = (1.0, 1.0)


def _disc(size=32, myo=10, lv=6):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size // 2, xx - size // 2)
    m = np.zeros((size, size), np.uint8)
    m[r < myo] = 2
    m[r < lv] = 3
    return m


# ---------------------------------------------------------------------------- scores


def test_soft_dice_with_one_hot_probs_is_the_mask_dice():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 4, (6, 12, 12)).astype(np.uint8)
    masks[0][masks[0] == 1] = 0  # RV absent from the input: the both-empty / one-empty conventions
    cand = masks.copy()
    cand[:3] = rng.integers(0, 4, (3, 12, 12))
    cand[4][cand[4] == 2] = 0  # MYO absent from a candidate
    one_hot = np.eye(4, dtype=np.float32)[masks].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(
        Scorer("soft-dice", masks, one_hot).score(cand), overlap.dice_batch(cand, masks)[0].mean(axis=1)
    )
    np.testing.assert_allclose(Scorer("mask", masks).score(cand), overlap.dice_batch(cand, masks)[0].mean(axis=1))


def test_probability_scores_by_hand():
    mask = np.array([[[3, 3, 0, 0]]], np.uint8)
    probs = np.zeros((1, 4, 1, 4), np.float32)
    probs[0, :, 0, :] = np.array(
        [[0.2, 0.4, 0.9, 1.0], [0.0, 0.0, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0]]
    )  # columns: pixels; rows: bg, RV, MYO, LV
    cand = np.array([[[3, 0, 0, 0]]], np.uint8)
    # LV: 2 · 0.8 / (1 + 1.4); RV absent from the candidate: P(no RV pixel) = 0.9; MYO: P = 1
    want = np.mean([0.9, 1.0, 2 * 0.8 / (1 + 1.4)])
    assert Scorer("soft-dice", mask, probs).score(cand)[0] == pytest.approx(want)
    # loglik: geometric mean of p(label) = (0.8 · 0.4 · 0.9 · 1.0) ** (1/4)
    assert Scorer("loglik", mask, probs).score(cand)[0] == pytest.approx((0.8 * 0.4 * 0.9 * 1.0) ** 0.25)
    floor = Scorer("loglik", mask, probs).score(np.array([[[1, 1, 1, 1]]], np.uint8))[0]
    assert floor == pytest.approx((PROB_FLOOR * PROB_FLOOR * 0.1 * PROB_FLOOR) ** 0.25)
    with pytest.raises(BadInputError, match="probabilities"):
        Scorer("loglik", mask, None)


def test_probability_rule_picks_the_right_candidate_where_the_mask_rule_picks_the_wrong_one(peaked_softmax):
    """The net hesitated over a bulge of LV into the MYO (0.55 LV) and a stray blob; the hard mask
    keeps both. Candidate A drops the blob but keeps the bulge and redraws two pixels the net was
    sure of; candidate B (the truth) drops blob and bulge. A is closer to the hard mask, B to the
    net's beliefs."""
    gt = _disc()
    bulge = np.zeros(gt.shape, bool)
    bulge[15:18, 22] = True  # MYO in truth
    blob = np.zeros(gt.shape, bool)
    blob[1:3, 1:3] = True
    sure = np.zeros(gt.shape, bool)
    sure[15:17, 11] = True  # LV in truth, and the net is sure
    inp = gt.copy()
    inp[bulge | blob] = 3
    probs = peaked_softmax(gt, 0.98)
    probs[:, bulge] = np.array([0.0, 0.0, 0.45, 0.55])[:, None]
    probs[:, blob] = np.array([0.4, 0.0, 0.0, 0.6])[:, None]
    a = inp.copy()
    a[blob] = 0
    a[sure] = 2
    b = gt.copy()
    sp = np.ones((1, 2))
    assert anatomy.evaluate_batch(np.stack([inp, a, b]), (1.0, 1.0))[1].tolist() == [False, True, True]
    cands = [a[None], b[None]]
    assert closest_valid(inp[None], cands, sp, scores=Scorer("mask", inp[None]).matrix(cands)).tolist() == [0]
    for rule in ("soft-dice", "loglik"):
        scores = Scorer(rule, inp[None], probs[None]).matrix(cands)
        assert closest_valid(inp[None], cands, sp, scores=scores).tolist() == [1], rule

    # the same through the gate, which reports the chosen candidate and its score
    def propose(m, ctx):
        return [a[None], b[None]]

    for rule, want in (("mask", a), ("soft-dice", b), ("loglik", b)):
        g = gate(inp[None], None, sp, propose, RefineConfig(method="morph", choose=rule), probs=probs[None])
        np.testing.assert_array_equal(g.refined[0], want)
        assert g.reasons == ["corrected"] and g.names == ["candidate 0" if rule == "mask" else "candidate 1"]
    dice_gt = overlap.dice_batch(np.stack([a, b]), np.stack([gt, gt]))[0].mean(axis=1)
    assert dice_gt[1] > dice_gt[0]  # the probability rule's choice is the better correction


@pytest.mark.parametrize("rule", ["mask", "soft-dice", "loglik"])
def test_closest_valid_equals_exhaustive_search_for_every_rule(rule, peaked_softmax):
    rng = np.random.default_rng(2)
    good = _disc()
    n = 6
    masks = np.stack([good] * n)
    for i in range(n):  # invalid inputs: a stray LV blob
        masks[i, 1 + i : 4 + i, 1:4] = 3
    probs = rng.dirichlet(np.ones(4) * 0.3, (n, 32, 32)).transpose(0, 3, 1, 2).astype(np.float32)
    probs = 0.5 * probs + 0.5 * np.stack([peaked_softmax(m, 0.98) for m in masks])
    spacing = np.ones((n, 2))
    candidates = [masks.copy()]  # identical to the input: never taken
    for _ in range(6):
        c = np.stack([good] * n)
        for i in range(n):
            if rng.random() < 0.5:
                y, x = rng.integers(0, 27, 2)
                c[i, y : y + 3, x : x + 3] = 3 if rng.random() < 0.5 else 1
            if rng.random() < 0.5:
                c[i] = _disc(lv=int(rng.integers(3, 6)))
        candidates.append(c)
    candidates.append(candidates[3].copy())  # an exact tie: the earlier wins
    scores = Scorer(rule, masks, probs).matrix(candidates)
    for min_agreement in (0.0, float(np.median(scores)), 0.999):
        choice = closest_valid(masks, candidates, spacing, min_agreement, scores=scores)
        for i in range(n):
            scored = [
                (scores[i, k], k)
                for k, c in enumerate(candidates)
                if anatomy.evaluate_batch(c[i : i + 1], spacing[:1])[1][0] and not (c[i] == masks[i]).all()
            ]
            scored = [(s, k) for s, k in scored if s >= min_agreement]
            want = min(scored, key=lambda s: (-s[0], s[1]))[1] if scored else -1
            assert choice[i] == want, (rule, min_agreement, i)


# ------------------------------------------------------------------- per-structure edits


def test_every_criterion_concerns_some_structure():
    assert set(CRITERION_STRUCTURES) == set(anatomy.CRITERIA_NAMES)
    assert all(CRITERION_STRUCTURES[n] and set(CRITERION_STRUCTURES[n]) <= {1, 2, 3} for n in anatomy.CRITERIA_NAMES)
    passed = np.ones((3, 16), bool)
    passed[0, anatomy.CRITERIA_NAMES.index("rv_disconnected_from_myo")] = False
    passed[1, anatomy.CRITERIA_NAMES.index("frontier_between_lv_and_background")] = False
    assert failing_structures(passed).tolist() == [[True, True, False], [False, True, True], [False, False, False]]


def test_structure_edits_leave_the_other_structures_bit_identical():
    rng = np.random.default_rng(3)
    masks = rng.integers(0, 4, (40, 16, 16)).astype(np.uint8)
    cand = rng.integers(0, 4, (40, 16, 16)).astype(np.uint8)
    replace = rng.random((40, 3)) < 0.5
    out = structure_edits(masks, cand, replace)
    for i in range(40):
        for j, label in enumerate((1, 2, 3)):
            if replace[i, j]:  # a replaced structure is the candidate's, minus what kept ones hold
                kept = np.isin(masks[i], [lab for jj, lab in enumerate((1, 2, 3)) if not replace[i, jj]])
                np.testing.assert_array_equal(out[i] == label, (cand[i] == label) & ~kept)
            else:
                assert ((out[i] == label) == (masks[i] == label)).all()  # bit-identical
    np.testing.assert_array_equal(structure_edits(masks, cand, np.zeros((40, 3), bool)), masks)


def test_gate_replaces_only_the_failing_structure(toy_heart):
    good = toy_heart()
    inp = good.copy()
    inp[20, 10] = 0  # a hole in the RV: only holes_in_rv fails
    assert anatomy.failed_criteria(anatomy.evaluate_slice(inp, SP)) == ["holes_in_rv"]
    moved = np.roll(good, 1, axis=1)  # the "reconstruction" redraws every structure

    def propose(m, ctx):
        out = Candidates()
        out.add(moved[None], "recon", "recon", offered=False, source=True)
        return out

    g = gate(inp[None], None, np.ones((1, 2)), propose, RefineConfig())
    assert g.reasons == ["corrected"] and g.families == ["structure"] and g.names == ["structure<recon>"]
    out = g.refined[0]
    for label in (2, 3):  # MYO and LV: bit-identical
        np.testing.assert_array_equal(out == label, inp == label)
    assert (out != inp).sum() < (moved != inp).sum() and anatomy.is_valid(out, SP)
    g = gate(inp[None], None, np.ones((1, 2)), propose, RefineConfig(candidates=("recon", "partial")))
    assert g.reasons == ["no-valid-candidate"]  # structure family off: nothing offered


def test_min_structure_dice_refuses_partial_losses_but_allows_removal(toy_heart):
    good = toy_heart()
    inp = good.copy()
    inp[20, 10] = 0  # a hole in the RV: invalid
    crescent = good.copy()
    crescent[(good == 1) & (np.arange(40)[:, None] < 20)] = 0  # half of the RV gone: still valid
    no_rv = good.copy()
    no_rv[good == 1] = 0  # the RV removed: valid (LV in its MYO ring)
    assert all(anatomy.is_valid(m, SP) for m in (crescent, no_rv, good))
    cands = [crescent[None], no_rv[None], good[None]]
    rv_dice = overlap.dice_batch(crescent[None], inp[None])[0][0, 0]
    assert 0.3 < rv_dice < 0.9
    rank = np.array([[0.9, 0.8, 0.5]])  # the rule prefers the half RV, then the removal
    assert closest_valid(inp[None], cands, np.ones((1, 2)), scores=rank).tolist() == [0]
    limited = closest_valid(inp[None], cands, np.ones((1, 2)), scores=rank, min_structure_dice=0.95)
    assert limited.tolist() == [1]  # removing a structure is allowed; keeping a fraction is not
    # through the gate, from the config
    cfg = RefineConfig(min_structure_dice=0.95)
    g = gate(inp[None], None, np.ones((1, 2)), lambda m, c: [crescent[None]], cfg)
    assert g.reasons == ["no-valid-candidate"] and (g.refined[0] == inp).all()
    off = RefineConfig(min_structure_dice=0.0)
    g = gate(inp[None], None, np.ones((1, 2)), lambda m, c: [crescent[None]], off)
    assert g.reasons == ["corrected"]
    assert RefineConfig().min_structure_dice > rv_dice  # the default refuses this half RV


def test_fallback_tier_only_corrects_what_the_first_tier_cannot(toy_heart):
    good = toy_heart()
    a = good.copy()
    a[20, 10] = 0  # a hole in the RV: invalid
    b = good.copy()
    b[20, 26] = 0  # a hole in the LV: invalid
    fixed_rv = np.roll(good, 1, axis=1)  # valid, but further from the inputs than ``good``
    assert anatomy.is_valid(fixed_rv, SP) and not anatomy.is_valid(b, SP)

    def propose(m, ctx):
        out = Candidates()
        out.add(np.stack([fixed_rv, b]), "first", "partial")  # row 0: valid; row 1: the input again
        out.add(np.stack([good, good]), "second", "samples", tier=1)  # closer to both, but a fallback
        return out

    g = gate(np.stack([a, b]), None, np.ones((2, 2)), propose, RefineConfig())
    assert g.reasons == ["corrected", "corrected"] and g.names == ["first", "second"]
    assert (g.refined[0] == fixed_rv).all() and (g.refined[1] == good).all()
    with pytest.raises(ConfigError, match="already in --candidates"):
        RefineConfig(fallback=("samples",))
    assert RefineConfig(candidates=("recon",), fallback=("samples",)).families == ("recon", "samples")


# ---------------------------------------------------------------------------- assignment


def _model(fold, trained, source="stored"):
    return ModelPatients(Path(f"nvae-f{fold}.pt"), fold, None if trained is None else frozenset(trained), source)


def test_assign_gives_each_patient_an_nvae_that_never_saw_it():
    patients = np.array(["p1", "p1", "p2", "p3", "p4", "t1"])
    folds = np.array([0, 0, 1, 1, 0, -1])
    f0, f1 = _model(0, {"p2", "p3"}), _model(1, {"p1", "p4"})
    a = assign(patients, folds, [f1, f0])  # order given does not matter
    assert [[f1, f0][m].label for m in a.model] == ["f0", "f0", "f1", "f1", "f0", "f0"]  # test patient: lowest fold
    assert (a.seen == UNSEEN).all()
    # a patient of a fold without its NVAE, that another never saw (a val patient): that one
    a = assign(np.array(["p5"]), np.array([2]), [f0, f1])
    assert a.model.tolist() == [0]


def test_assign_refuses_seen_patients_naming_at_most_five():
    names = [f"patient{i:03d}" for i in range(1, 9)]
    f0 = _model(0, set(names))
    with pytest.raises(BadInputError) as err:
        assign(np.array(names), np.ones(8, int), [f0])
    msg = str(err.value)
    assert "patient001, patient002, patient003, patient004, patient005 and 3 more" in msg
    assert "patient006" not in msg and "--allow-seen" in msg and "\n" not in msg
    a = assign(np.array(names), np.ones(8, int), [f0], allow_seen=True)
    assert (a.seen == SEEN).all() and (a.model == 0).all()


def test_assign_old_checkpoints_derive_or_refuse():
    derived = ModelPatients.from_data("old.pt", {"fold": 1, "folds": {"p1": 0, "p2": 1, "t": -1}})
    assert derived.source == "derived" and derived.trained == {"p1"}
    assert assign(np.array(["p2", "t"]), np.array([1, -1]), [derived]).seen.tolist() == [UNSEEN, UNSEEN]
    unknown = ModelPatients.from_data("old.pt", {"input": "gt"})
    assert unknown.trained is None and unknown.label == "split"
    with pytest.raises(BadInputError, match="stores no training patients"):
        assign(np.array(["p1"]), np.array([0]), [unknown])
    assert assign(np.array(["p1"]), np.array([0]), [unknown], allow_seen=True).seen.tolist() == [UNKNOWN]
    with pytest.raises(BadInputError, match="two NVAEs for fold 0"):
        assign(np.array(["p1"]), np.array([0]), [_model(0, set()), _model(0, set())])


# ---------------------------------------------------------------------------- latent steps


def test_latent_steps_go_from_the_reconstruction_to_the_prior_mean():
    import torch

    from acdctool.models.nvae import NVAE

    torch.manual_seed(0)
    model = NVAE(image_size=32, scales=2, groups_per_scale=(2, 1), latent_channels=4).eval()
    x = torch.nn.functional.one_hot(torch.from_numpy(_disc()).long(), 4).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        feats = model.encode(x)
        assert torch.equal(model.decode(feats, toward_prior=0.0), model.reconstruct(x))
        torch.testing.assert_close(model.decode(feats, toward_prior=1.0), model.sample(1, mode="mean"))
        half = model.decode(feats, toward_prior=0.5)
    assert not torch.equal(half, model.reconstruct(x)) and not torch.equal(half, model.sample(1, mode="mean"))


# ---------------------------------------------------------------------------- morph candidate


def test_nvae_proposer_offers_the_input_s_clean_up_only_when_asked(nvae_checkpoint_factory, tmp_path, toy_heart):
    from acdctool.correct import morph
    from acdctool.correct.nvae_proposer import NvaeProposer

    ck = nvae_checkpoint_factory(tmp_path / "nvae.pt", size=64)
    masks = np.stack([np.pad(toy_heart(), 12), np.pad(_disc(40), 12)])
    masks[0, 3:6, 3:6] = 3  # a stray LV blob: morph removes it
    masks[1, 32, 32] = 0  # a hole in the LV: morph fills it
    with_morph = NvaeProposer.load(ck, RefineConfig(device="cpu", polish=True), (64, 64), tmp_path / "seg.h5")
    out = with_morph(masks, None)
    k = out.names.index("morph")
    assert out.families[k] == "morph" and out.offered[k] and "morph+polish" not in out.names
    np.testing.assert_array_equal(out.arrays[k], morph.clean_batch(masks))
    assert anatomy.is_valid(out.arrays[k][1], SP) and not out.arrays[k][0, 3:6, 3:6].any()
    no_morph = RefineConfig(device="cpu", candidates=tuple(c for c in RefineConfig().candidates if c != "morph"))
    out = NvaeProposer.load(ck, no_morph, (64, 64), tmp_path / "seg.h5")(masks, None)
    assert "morph" not in out.families and "recon" in out.names
