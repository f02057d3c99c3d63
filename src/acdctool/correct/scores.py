"""How well a candidate agrees with the segmentation it would replace: the gate's ranking scores.

Three rules (``refine --choose``), each a score in [0, 1], higher is better:

- ``mask``: mean Dice (RV, MYO, LV) between the candidate and the input's hard mask, with the
  ACDC conventions (both empty: 1, one empty: 0).
- ``soft-dice``: the expected Dice under the segmentation's softmax ``p``, mean over RV, MYO,
  LV. For a class the candidate ``c`` holds, ``2 Σ c_k p_k / (Σ c_k + Σ p_k)`` (soft Dice,
  the usual approximation of the expectation); for a class it lacks, the probability that a
  mask drawn pixel by pixel from ``p`` lacks it too, ``Π (1 − p_k)`` (exactly the expected Dice
  under the both-empty-is-1 convention). With a one-hot ``p`` this is the ``mask`` score.
- ``loglik``: the geometric mean over pixels of the softmax probability of the candidate's
  label, ``exp(mean log p_c)``: the mean log-likelihood of the candidate under the
  segmentation, mapped into [0, 1] so ``--min-agreement`` applies to it as to the others.
  Probabilities are floored at :data:`PROB_FLOOR` (float16 storage cannot tell smaller ones
  apart).

Both probability rules weigh each pixel by how sure the segmentation net was, so a candidate
that redraws the pixels the net hesitated over (and the hard mask got wrong) beats one that
copies the hard mask there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from acdctool.config import Choose
from acdctool.conventions import FOREGROUND, N_CLASSES
from acdctool.errors import BadInputError
from acdctool.metrics import overlap

PROB_FLOOR = 1e-4
"""Least probability a pixel's label counts with in ``loglik`` (log 1e-4 ≈ −9.2 per pixel)."""


class Scorer:
    """Scores of candidates against one batch of inputs, by one rule.

    Per-row quantities of the softmax (class sums, log-probability of each class being absent)
    are computed once, so scoring K candidates costs K passes over the pixels.

    Args:
        rule: a :class:`acdctool.config.Choose` value.
        masks: (B, H, W) input label maps (the ``mask`` rule's reference).
        probs: (B, 4, H, W) softmax of the segmentation net (background, RV, MYO, LV);
            needed by ``soft-dice`` and ``loglik``.

    Raises:
        BadInputError: a probability rule without ``probs``, or ``probs`` of the wrong shape.

    Example:
        >>> m = np.zeros((1, 4, 4), np.uint8); m[0, 1:3, 1:3] = 3
        >>> p = np.eye(4, dtype=np.float32)[m].transpose(0, 3, 1, 2)  # one-hot: soft-dice = mask
        >>> c = m.copy(); c[0, 1, 1] = 0
        >>> float(Scorer("mask", m).score(c)[0]) == float(Scorer("soft-dice", m, p).score(c)[0])
        True
    """

    def __init__(self, rule: str, masks: np.ndarray, probs: np.ndarray | None = None):
        self.rule, self.masks = rule, masks
        if rule == Choose.MASK.value:
            return
        if probs is None:
            raise BadInputError(f"--choose {rule} needs the segmentation's probabilities ('probs')")
        if probs.shape != (masks.shape[0], N_CLASSES, *masks.shape[1:]):
            raise BadInputError(
                f"probs: expected shape {(masks.shape[0], N_CLASSES, *masks.shape[1:])}, got {probs.shape}"
            )
        self.probs = np.asarray(probs, dtype=np.float32).reshape(len(masks), N_CLASSES, -1)
        fg = np.asarray(FOREGROUND)
        self.prob_sums = self.probs[:, fg].sum(axis=2, dtype=np.float64)  # (B, 3)
        with np.errstate(divide="ignore"):
            self.log_absent = np.log1p(-np.clip(self.probs[:, fg], 0, 1), dtype=np.float64).sum(axis=2)

    def score(self, candidate: np.ndarray) -> np.ndarray:
        """(B,) float64 scores of one candidate (B, H, W) against the inputs."""
        if self.rule == Choose.MASK.value:
            return overlap.dice_batch(candidate, self.masks)[0].mean(axis=1)
        b = len(candidate)
        labels = candidate.reshape(b, 1, -1).astype(np.intp)
        p_label = np.take_along_axis(self.probs, labels, axis=1)[:, 0]  # (B, HW): p of the candidate's label
        if self.rule == Choose.LOGLIK.value:
            return np.exp(np.log(np.maximum(p_label, PROB_FLOOR), dtype=np.float64).mean(axis=1))
        codes = (labels[:, 0] + N_CLASSES * np.arange(b)[:, None]).ravel()
        inter = np.bincount(codes, weights=p_label.ravel(), minlength=b * N_CLASSES).reshape(b, N_CLASSES)
        sizes = np.bincount(codes, minlength=b * N_CLASSES).reshape(b, N_CLASSES)
        fg = np.asarray(FOREGROUND)
        inter, sizes = inter[:, fg], sizes[:, fg].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            soft = 2 * inter / (sizes + self.prob_sums)
        return np.where(sizes > 0, soft, np.exp(self.log_absent)).mean(axis=1)

    def matrix(self, candidates: Sequence[np.ndarray]) -> np.ndarray:
        """(B, K) scores of K candidates."""
        if not candidates:
            return np.empty((len(self.masks), 0))
        return np.stack([self.score(c) for c in candidates], axis=1)
