"""``refine``: correct segmentations with the NVAE (or the morphological baseline), gated.

This docstring is the one description of refine's behaviour; the CLI help, README and
``docs/FORMAT.md`` point here.

**Gate** ``anatomy`` (after Painchaud et al.). A slice that passes the 16 anatomical criteria
is kept bit-identical. An invalid one is replaced by the anatomically valid candidate that
agrees best with the segmentation (**choice**, below), among at least ``min_agreement``; if
none qualifies, the input is kept: the corrector never trades a plausible-looking error for a
different one. Only invalid slices go through the NVAE, so a good segmentation costs one
validity check. Gate ``none`` replaces every slice by the NVAE's posterior-mean reconstruction
(or the morphological clean-up).

**Candidates** (``candidates``, families; :class:`acdctool.config.Family`; all but ``latent``
by default), for the NVAE:

- ``recon``: the posterior-mean reconstruction;
- ``partial``: the input with only the pixels whose label the NVAE gives a probability below
  t replaced by the NVAE's label, one per threshold of ``partial``;
- ``latent``: decodings along a path in latent space from the input's own encoding towards
  the NVAE's mean shape: every group at ``(1 − α) · posterior mean + α · prior mean``, one
  per α of ``latent_steps`` (Painchaud et al. search the latent space for the closest valid
  shape);
- ``samples``: ``samples`` decodings sampled from the posterior at ``temperature``;
- ``structure``: per-structure edits: only the structures whose criteria fail (the pairs for
  the hole-between, gap and frontier criteria) are taken from each unpolished NVAE candidate
  (the reconstruction always among them; an edit equal to its offered source is dropped);
  every other structure keeps its pixels bit-identical and wins any overlap (:mod:`.structure`);
- with ``polish``, each offered candidate but the per-structure edits is offered again after
  the morphological clean-up (family ``<family>+polish``).

Method ``morph`` has one candidate, the clean-up (largest component per class, holes filled;
family ``morph``).

**Choice** (``choose``; :mod:`.scores`): ``mask`` ranks by mean Dice with the input mask;
``soft-dice`` by the expected Dice under the segmentation's softmax, ``loglik`` by the
geometric-mean softmax probability of the candidate's labels; both need the input's ``probs``
(``gen-seg --save-probs``, carried by make-3gram). ``min_agreement`` applies to that score.
Ties go to the earlier candidate; a candidate equal to the (invalid) input is never taken.

**No leakage** (:mod:`.assign`). Several NVAEs may be given, one per fold: every patient is
refined by one that never trained on it (its own fold's, the way gen-seg assigns fold models;
test patients, fold −1: the lowest fold's). A patient that every NVAE trained on (or may have:
checkpoints without training patients and without a fold) is refused (``BadInputError``,
exit 65) unless ``allow_seen``; then it is refined by its fold's NVAE (or the first) and the
row says so. All NVAEs must take the file's context (4 or 12 channels) and slice size.

**Output** (kind ``refined``): the input's rows, image and ground truth, the refined ``pred``,
and per row ``refine_changed``, ``refine_reason`` (``valid-kept``, ``corrected``,
``no-valid-candidate``, ``ungated``), ``refine_agreement`` (mean Dice between output and
input), ``refine_score`` (the choice rule's score of the output), ``refine_family`` and
``refine_candidate`` (which candidate replaced the input; empty when kept),
``refine_model`` (``f0``, ``f1``, ..., ``split``: the NVAE used; empty for morph) and
``refine_nvae_seen`` (1: that NVAE trained on the patient, only with ``allow_seen``; 0: it
did not; −1: unknown). The config stores the resolved settings, the NVAEs (path, SHA-256,
fold, arguments, training data) and the input's config.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.config import Choose, Context, Family, Gate, Method, RefineConfig, config_to_dict
from acdctool.errors import BadInputError, ConfigError, FileKindError
from acdctool.io.slices import INDEX_COLUMNS, SliceFile, SliceWriter
from acdctool.metrics import anatomy, overlap
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance
from acdctool.stages.refine import morph
from acdctool.stages.refine.assign import TEST_POLICY, Assignment, assign
from acdctool.stages.refine.scores import Scorer
from acdctool.stages.refine.structure import failing_structures, structure_edits

REASONS = ("valid-kept", "corrected", "no-valid-candidate", "ungated")
COLUMNS = {
    "refine_changed": "int8",
    "refine_reason": "str",
    "refine_agreement": "float32",
    "refine_score": "float32",
    "refine_family": "str",
    "refine_candidate": "str",
    "refine_model": "str",
    "refine_nvae_seen": "int8",
}


@dataclass
class Candidates:
    """Candidate label maps for one batch, with what each is.

    Attributes:
        arrays: K arrays (B, H, W) uint8.
        names: e.g. ``recon``, ``partial 0.05``, ``latent 0.5``, ``sample 2``, ``recon+polish``.
        families: ``recon``, ``partial``, ``latent``, ``samples``, ``structure``, ``morph``,
            ``<family>+polish``.
        offered: whether the gate may choose it (else only a source of per-structure edits).
        source: whether per-structure edits take structures from it.
    """

    arrays: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    offered: list[bool] = field(default_factory=list)
    source: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrays)

    def add(self, array: np.ndarray, name: str, family: str, *, offered: bool = True, source: bool = False) -> None:
        self.arrays.append(array)
        self.names.append(name)
        self.families.append(family)
        self.offered.append(offered)
        self.source.append(source)

    @classmethod
    def of(cls, proposed: Candidates | Sequence[np.ndarray]) -> Candidates:
        """A proposer's answer as :class:`Candidates` (a plain list: family ``candidate``)."""
        if isinstance(proposed, Candidates):
            return proposed
        out = cls()
        for k, array in enumerate(proposed):
            out.add(array, f"candidate {k}", "candidate")
        return out


Proposer = Callable[[np.ndarray, np.ndarray | None], "Candidates | list[np.ndarray]"]
"""(masks (B, H, W), context (B, 3, H, W) or None) → candidates; the first replaces every
slice under ``--gate none``."""


@dataclass(frozen=True)
class Inputs:
    """What refine reads."""

    seg: Path
    """gen-seg output (kind ``seg``), make-3gram output (kind ``3gram``, required by
    ``context="3gram"``), or a previous refine output."""
    nvae: Path | Sequence[Path] | None = None
    """NVAE checkpoint(s) (train-nvae ``best.pt``), one per fold; needed by ``method="nvae"``."""
    provenance: Provenance | None = None
    """Stored in the file; None: made here, without a command line."""

    @property
    def nvaes(self) -> tuple[Path, ...]:
        if self.nvae is None:
            return ()
        return (Path(self.nvae),) if isinstance(self.nvae, (str, Path)) else tuple(Path(p) for p in self.nvae)


@dataclass
class Result:
    """What refine wrote: rows, rows per reason, anatomically invalid slices before and after,
    corrected rows per candidate family, rows per NVAE, rows refined by an NVAE that saw them."""

    path: Path
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    invalid_before: int = 0
    invalid_after: int = 0
    families: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    seen: int = 0


@dataclass
class GateResult:
    """One batch through the gate.

    Attributes:
        refined: (B, H, W) uint8.
        reasons: per row, one of :data:`REASONS`.
        valid_in, valid_out: (B,) bool, anatomical validity of input and output.
        names, families: per row, the chosen candidate's name and family ("" where kept).
        scores: (B,) float64, the ``choose`` rule's score of the output.
    """

    refined: np.ndarray
    reasons: list[str]
    valid_in: np.ndarray
    valid_out: np.ndarray
    names: list[str]
    families: list[str]
    scores: np.ndarray


def run(
    config: RefineConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Refine the ``pred`` masks of a segmentation file into ``output`` (kind ``refined``).

    The output keeps image, ground truth and index, so ``eval OUTPUT --baseline SEG`` compares
    directly. The rules are in this module's docstring.

    Args:
        config: method, gate, choice, candidates, sampling and device.
        inputs: the segmentation file and the NVAE checkpoints (and provenance).
        output: output slice file, written atomically.
        force: replace an existing ``output``.
        progress: one event per batch (unit ``rows``).

    Raises:
        FileKindError: the input is not a segmentation output; an ``nvae`` is not an NVAE checkpoint.
        BadInputError: empty file; a checkpoint's input (4 or 12 channels, image size) does
            not match the file and ``context``; two NVAEs for one fold; patients every NVAE
            trained on (without ``allow_seen``); ``choose`` needs ``probs`` the file lacks.
        ConfigError: ``method="nvae"`` without a checkpoint; ``gate="none"`` without ``recon``.

    Example:
        >>> nvaes = [Path(f"runs/nvae-f{k}/best.pt") for k in range(5)]
        >>> run(RefineConfig(), Inputs(Path("seg.h5"), nvae=nvaes), Path("refined.h5")).invalid_after  # doctest: +SKIP
        5
    """
    src, nvaes, out = Path(inputs.seg), inputs.nvaes, Path(output)
    kinds = ("3gram",) if config.context == Context.TRIGRAM.value else ("seg", "3gram", "refined")
    with SliceFile(src, kinds=kinds) as f:
        if not f.has("pred"):
            raise FileKindError(f"{src}: no 'pred' masks: not a segmentation output (run gen-seg first)")
        if len(f) == 0:
            raise BadInputError(f"{src}: the file has no rows")
        with_probs = config.choose != Choose.MASK.value
        if with_probs and not f.has("probs"):
            raise BadInputError(
                f"{src}: --choose {config.choose} needs the segmentation's probabilities ('probs'), which this "
                "file lacks: run gen-seg with --save-probs (make-3gram carries them), or use --choose mask"
            )
        proposers, infos = _proposers(config, nvaes, f)
        index = f.index
        assignment = _assign(config, proposers, index)
        labels = [_label(p) for p in proposers]
        keep = [n for n in ("image", "gt") if f.has(n)]
        specs = {n: (str(f.dataset(n).dtype), ()) for n in [*keep, "pred"]}
        extra = {
            c: ("str" if index[c].dtype == object else str(index[c].dtype))
            for c in index.columns
            if c not in INDEX_COLUMNS and c not in COLUMNS
        }
        spacing = f.spacing()
        result = Result(out, counts=dict.fromkeys(REASONS, 0))
        families: Counter[str] = Counter()
        tracker = Tracker(progress, len(f), "rows")
        stored = {
            **config_to_dict(config),
            "nvae": infos,
            "nvae_test_policy": TEST_POLICY if infos else None,
            "input_config": f.config,
            "input_kind": f.kind,
        }
        with SliceWriter(
            out,
            kind="refined",
            config=stored,
            provenance=make_provenance([src, *nvaes]) if inputs.provenance is None else inputs.provenance,
            shape=f.shape,
            arrays=specs,
            force=force,
            columns={**extra, **COLUMNS},
            inputs=[src, *nvaes],
        ) as writer:
            for start in range(0, len(f), config.batch_size):
                rows = slice(start, min(start + config.batch_size, len(f)))
                masks = f.read("pred", rows)
                context = f.read("context", rows) if config.context == Context.TRIGRAM.value else None
                probs = f.read("probs", rows) if with_probs else None
                who = assignment.model[rows]
                parts = []
                for m in np.unique(who):
                    sel = np.flatnonzero(who == m)
                    parts.append(
                        (
                            sel,
                            gate(
                                masks[sel],
                                None if context is None else context[sel],
                                spacing[rows][sel],
                                proposers[m],
                                config,
                                probs=None if probs is None else probs[sel],
                            ),
                        )
                    )
                g = _merge(parts, len(masks))
                agreement = overlap.dice_batch(g.refined, masks)[0].mean(axis=1)
                changed = (g.refined != masks).any(axis=(1, 2))
                records = index.iloc[rows].to_dict("records")
                seen = assignment.seen[rows]
                for i, rec in enumerate(records):
                    rec.update(
                        refine_changed=int(changed[i]),
                        refine_reason=g.reasons[i],
                        refine_agreement=float(agreement[i]),
                        refine_score=float(g.scores[i]),
                        refine_family=g.families[i],
                        refine_candidate=g.names[i],
                        refine_model=labels[who[i]],
                        refine_nvae_seen=int(seen[i]),
                    )
                    result.counts[g.reasons[i]] += 1
                    if g.families[i]:
                        families[g.families[i]] += 1
                    result.models[labels[who[i]]] = result.models.get(labels[who[i]], 0) + 1
                result.seen += int((seen != 0).sum())
                result.invalid_before += int((~g.valid_in).sum())
                result.invalid_after += int((~g.valid_out).sum())
                writer.append(records, **{n: f.read(n, rows) for n in keep}, pred=g.refined)
                result.rows += len(records)
                tracker.advance(len(records))
    result.families = dict(families.most_common())
    return result


def gate(
    masks: np.ndarray,
    context: np.ndarray | None,
    spacing: np.ndarray,
    propose: Proposer,
    config: RefineConfig,
    probs: np.ndarray | None = None,
) -> GateResult:
    """Apply the gate to one batch (rules in the module docstring).

    Args:
        masks: (B, H, W) uint8 input label maps.
        context: (B, 3, H, W) 3-gram context, or None.
        spacing: (B, 2) pixel spacing, mm.
        propose: candidates for a sub-batch; the first is the ``gate="none"`` replacement.
        config: gate, choice, candidate families, minimum agreement.
        probs: (B, 4, H, W) softmax of the segmentation, needed by ``choose`` other than ``mask``.

    Returns:
        :class:`GateResult`.
    """
    values, valid = anatomy.evaluate_batch(masks, spacing)
    n = len(masks)
    names, families = [""] * n, [""] * n
    if config.gate == Gate.NONE.value:
        cands = Candidates.of(propose(masks, context))
        out = cands.arrays[0].astype(np.uint8)
        score = Scorer(config.choose, masks, probs).score(out)
        return GateResult(
            out,
            ["ungated"] * n,
            valid,
            anatomy.evaluate_batch(out, spacing)[1],
            [cands.names[0]] * n,
            [cands.families[0]] * n,
            score,
        )
    out = masks.copy()
    valid_out = valid.copy()
    reasons = ["valid-kept" if v else "no-valid-candidate" for v in valid]
    todo = np.flatnonzero(~valid)
    scorer = Scorer(config.choose, masks, probs)
    if todo.size:
        sub = masks[todo]
        cands = Candidates.of(propose(sub, None if context is None else context[todo]))
        if Family.STRUCTURE.value in config.candidates and any(cands.source):
            replace = failing_structures(anatomy.criteria_passed(values[todo]))
            for k in [k for k in range(len(cands)) if cands.source[k]]:
                edit = structure_edits(sub, cands.arrays[k], replace)
                if cands.offered[k]:  # an edit equal to its offered source would only be checked twice
                    same = (edit == cands.arrays[k]).all(axis=(1, 2))
                    edit[same] = sub[same]  # equal to the input: never taken
                cands.add(edit, f"structure<{cands.names[k]}>", Family.STRUCTURE.value)
        offered = [k for k in range(len(cands)) if cands.offered[k]]
        arrays = [cands.arrays[k] for k in offered]
        sub_scorer = Scorer(config.choose, sub, None if probs is None else probs[todo])
        choice = closest_valid(sub, arrays, spacing[todo], config.min_agreement, scores=sub_scorer.matrix(arrays))
        for j, (i, k) in enumerate(zip(todo, choice, strict=True)):
            if k >= 0:
                out[i] = arrays[k][j]
                reasons[i] = "corrected"
                valid_out[i] = True
                names[i], families[i] = cands.names[offered[k]], cands.families[offered[k]]
    return GateResult(out, reasons, valid, valid_out, names, families, scorer.score(out))


def closest_valid(
    masks: np.ndarray,
    candidates: list[np.ndarray],
    spacing: np.ndarray,
    min_agreement: float = 0.0,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """Per row, the anatomically valid candidate that agrees best with the input.

    Candidates are checked lazily, best score first, so a row costs as many anatomy checks
    as candidates it rejects (usually one or two), not one per candidate; the result is the
    same as checking all. Ties go to the earlier candidate. A candidate identical to the
    (invalid) input is never taken.

    Args:
        masks: (B, H, W) input label maps, all anatomically invalid.
        candidates: K arrays (B, H, W), candidate label maps.
        spacing: (B, 2) pixel spacing, mm.
        min_agreement: least score for a candidate to be taken.
        scores: (B, K) agreement of each candidate (higher is better, e.g.
            :class:`.scores.Scorer`); default: mean Dice with the input.

    Returns:
        (B,) int64: index into ``candidates`` of the chosen one, −1 where none qualifies.

    Example:
        >>> m = np.zeros((1, 8, 8), np.uint8); m[0, 2:6, 2:6] = 3; m[0, 3, 3] = 0  # LV with a hole
        >>> empty = np.zeros_like(m)  # valid, mean Dice 2/3 with m (RV, MYO both empty)
        >>> closest_valid(m, [m.copy(), empty], np.ones((1, 2))).tolist()
        [1]
        >>> closest_valid(m, [m.copy(), empty], np.ones((1, 2)), min_agreement=0.9).tolist()
        [-1]
    """
    n = len(masks)
    choice = np.full(n, -1, dtype=np.int64)
    if n == 0 or not candidates:
        return choice
    if scores is None:
        agreement = np.stack([overlap.dice_batch(c, masks)[0].mean(axis=1) for c in candidates], axis=1)
    else:
        agreement = np.array(scores, dtype=np.float64, copy=True)
    unchanged = np.stack([(c == masks).all(axis=(1, 2)) for c in candidates], axis=1)
    agreement[unchanged | (agreement < min_agreement) | np.isnan(agreement)] = -np.inf
    order = np.argsort(-agreement, axis=1, kind="stable")
    pending = np.arange(n)
    for rank in range(len(candidates)):
        k = order[pending, rank]
        admissible = np.isfinite(agreement[pending, k])
        pending, k = pending[admissible], k[admissible]  # the rest have no candidate left
        if pending.size == 0:
            break
        cand = np.stack([candidates[j][i] for i, j in zip(pending, k, strict=False)])
        ok = anatomy.evaluate_batch(cand, spacing[pending])[1]
        choice[pending[ok]] = k[ok]
        pending = pending[~ok]
    return choice


class _Morph:
    """The morphological baseline as a proposer: one candidate, family ``morph``."""

    info = None
    patients = None

    def __call__(self, masks: np.ndarray, context: np.ndarray | None) -> Candidates:
        out = Candidates()
        out.add(morph.clean_batch(masks), "morph", "morph")
        return out


def _proposers(config: RefineConfig, nvaes: Sequence[Path], f: SliceFile) -> tuple[list[Any], list[dict] | None]:
    if config.method == Method.MORPH.value:
        return [_Morph()], None
    if not nvaes:
        raise ConfigError("--method nvae needs --nvae CHECKPOINT (or use --method morph)")
    if config.gate == Gate.NONE.value and Family.RECON.value not in config.candidates:
        raise ConfigError("--gate none replaces every slice by the reconstruction: keep recon in --candidates")
    from acdctool.stages.refine.nvae_proposer import NvaeProposer

    proposers = [NvaeProposer.load(p, config, image_shape=f.shape, path_for_errors=f.path) for p in nvaes]
    return proposers, [p.info for p in proposers]


def _assign(config: RefineConfig, proposers: list[Any], index: Any) -> Assignment:
    patients, folds = index.patient.to_numpy(), index.fold.to_numpy()
    if proposers[0].patients is None:  # morph: no model to have seen anyone
        return Assignment(np.zeros(len(index), np.int64), np.zeros(len(index), np.int8))
    return assign(patients, folds, [p.patients for p in proposers], config.allow_seen)


def _label(proposer: Any) -> str:
    return "" if proposer.patients is None else proposer.patients.label


def _merge(parts: list[tuple[np.ndarray, GateResult]], n: int) -> GateResult:
    """Gate results of sub-batches (rows ``sel`` each) back into one batch of ``n`` rows."""
    if len(parts) == 1 and len(parts[0][0]) == n:
        return parts[0][1]
    first = parts[0][1]
    out = GateResult(
        np.empty((n, *first.refined.shape[1:]), np.uint8),
        [""] * n,
        np.zeros(n, bool),
        np.zeros(n, bool),
        [""] * n,
        [""] * n,
        np.zeros(n),
    )
    for sel, g in parts:
        out.refined[sel], out.valid_in[sel], out.valid_out[sel], out.scores[sel] = (
            g.refined,
            g.valid_in,
            g.valid_out,
            g.scores,
        )
        for j, i in enumerate(sel):
            out.reasons[i], out.names[i], out.families[i] = g.reasons[j], g.names[j], g.families[j]
    return out
