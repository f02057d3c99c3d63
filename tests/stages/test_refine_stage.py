"""The ``refine`` stage's parts: the gate, the closest valid candidate, partial edits, the morphological clean-up."""

from __future__ import annotations

import numpy as np

from acdctool.config import RefineConfig
from acdctool.correct.gate import closest_valid, gate
from acdctool.correct.morph import clean_slice
from acdctool.metrics import anatomy, overlap


def test_clean_slice_removes_fragments_and_fills_holes():
    m = np.zeros((20, 20), np.uint8)
    m[4:16, 4:16] = 2
    m[7:13, 7:13] = 3  # LV inside MYO: must survive hole filling of MYO
    m[9, 9] = 0  # hole in LV
    m[18, 18] = 3  # stray LV pixel
    out = clean_slice(m)
    assert out[9, 9] == 3 and out[18, 18] == 0
    assert (out[7:13, 7:13] == 3).all() and (out[4, 4:16] == 2).all()


def test_gate_keeps_valid_rows_bit_identical():
    valid = np.zeros((2, 32, 32), np.uint8)
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    valid[:, r < 10] = 2
    valid[:, r < 6] = 3
    masks = valid.copy()
    masks[1, 0:2, 0:2] = 3  # row 1: stray LV fragment → invalid
    spacing = np.ones((2, 2))
    assert anatomy.evaluate_batch(masks, spacing)[1].tolist() == [True, False]

    def propose(m, ctx):  # a proposer that would wreck any row it is given
        return [np.zeros_like(m), valid[: len(m)]]

    g = gate(masks, None, spacing, propose, RefineConfig(method="morph"))
    out, reasons, valid_in, valid_out = g.refined, g.reasons, g.valid_in, g.valid_out
    assert reasons == ["valid-kept", "corrected"]
    assert valid_in.tolist() == [True, False] and valid_out.tolist() == [True, True]
    assert out[0].tobytes() == masks[0].tobytes()
    np.testing.assert_array_equal(out[1], valid[1])  # the valid candidate closest to the input wins
    g = gate(masks, None, spacing, propose, RefineConfig(method="morph", gate="none"))
    out, reasons = g.refined, g.reasons
    # Ungated, the empty candidate would erase both slices: never admissible, the input stays.
    assert reasons == ["no-valid-candidate"] * 2 and (out == masks).all()


def _disc(size=32, myo=10, lv=6):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size // 2, xx - size // 2)
    m = np.zeros((size, size), np.uint8)
    m[r < myo] = 2
    m[r < lv] = 3
    return m


def test_partial_edits_go_from_input_to_reconstruction():
    import torch

    from acdctool.correct.nvae_proposer import partial_edits

    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.integers(0, 4, (3, 16, 16)))
    probs = torch.from_numpy(rng.dirichlet(np.ones(4), (3, 16, 16))).permute(0, 3, 1, 2).float()
    recon = probs.argmax(1)
    edits = partial_edits(masks, probs, (1e-6, 0.1, 0.3, 0.6, 1.0))
    p_input = probs.gather(1, masks.unsqueeze(1)).squeeze(1)
    changed = [int((e != masks).sum()) for e in edits]
    assert changed == sorted(changed) and changed[0] == 0  # more confidence needed to keep → more edits
    assert torch.equal(edits[-1], torch.where(p_input >= 1.0, masks, recon))
    for e, t in zip(edits, (1e-6, 0.1, 0.3, 0.6, 1.0), strict=False):
        edited = e != masks
        assert (p_input[edited] < t).all()  # only pixels the NVAE gives the input label < t
        assert torch.equal(e[edited], recon[edited])  # ... and they take the NVAE's label


def test_argmax_labels_matches_torch_argmax_with_ties():
    import torch

    from acdctool.data.loader import argmax_labels

    scores = torch.randint(0, 3, (4, 4, 9, 7)).float()  # many ties: the first maximum wins in both
    assert torch.equal(argmax_labels(scores), scores.argmax(1))


def test_closest_valid_equals_exhaustive_search():
    rng = np.random.default_rng(1)
    good = _disc()
    masks = np.stack([good] * 6)
    for i in range(6):  # invalid inputs: a stray LV blob
        masks[i, 1 + i : 4 + i, 1:4] = 3
    spacing = np.ones((6, 2))
    candidates = [masks.copy()]  # identical to the input: never taken
    for _ in range(5):
        c = np.stack([good] * 6)
        for i in range(6):
            if rng.random() < 0.5:  # half the rows keep a stray blob: invalid candidate
                y, x = rng.integers(0, 27, 2)
                c[i, y : y + 3, x : x + 3] = 3 if rng.random() < 0.5 else 1
            if rng.random() < 0.5:  # shrink the ring: valid, less agreement
                c[i] = _disc(lv=int(rng.integers(3, 6)))
        candidates.append(c)
    for min_agreement in (0.0, 0.9, 0.99):
        choice = closest_valid(masks, candidates, spacing, min_agreement)
        for i in range(6):
            scored = [
                (overlap.dice_batch(c[i : i + 1], masks[i : i + 1])[0].mean(), k)
                for k, c in enumerate(candidates)
                if anatomy.evaluate_batch(c[i : i + 1], spacing[:1])[1][0] and not (c[i] == masks[i]).all()
            ]
            scored = [(a, k) for a, k in scored if a >= min_agreement]
            want = min(scored, key=lambda s: (-s[0], s[1]))[1] if scored else -1
            assert choice[i] == want, (min_agreement, i)
    assert (closest_valid(masks, candidates, spacing, 0.0) > 0).all()


def test_clean_slice_at_image_border():
    m = np.zeros((12, 12), np.uint8)
    m[0:6, 0:6] = 2  # touches the top-left corner
    m[2, 2] = 0  # a hole: filled
    m[0, 3] = 0  # a notch open to the image edge: not a hole
    m[10, 10] = 2  # a stray fragment: removed
    out = clean_slice(m)
    assert out[2, 2] == 2 and out[0, 3] == 0 and out[10, 10] == 0
    assert (out[1:6, 0:6] == 2).all()
