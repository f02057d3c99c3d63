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

**Candidates** (``candidates``, families; :class:`acdctool.config.Family`; by default all but
``latent`` in the first tier and ``smooth``, ``empty`` then ``repair`` as the fallback), for the
NVAE:

- ``morph``: the morphological clean-up of the input alone (largest component per class,
  holes filled): when a stray blob or a hole is the only fault, it is the smallest valid
  edit, and it keeps a small apical structure that the NVAE's candidates would drop;
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
  every other structure keeps its pixels bit-identical and wins any overlap
  (:mod:`acdctool.correct.structure`);
- ``smooth``: the segmentation's own softmax, smoothed in-plane by a Gaussian of each σ of
  ``smooth`` (px), argmax, then the morphological clean-up (:mod:`acdctool.correct.smooth`);
  only when the input has ``probs``, else skipped (the output's config says whether it was
  used: ``smooth_used``);
- ``empty`` (a fallback only, always the last tier): the empty slice, for a slice at either end
  of its stack that no other candidate made valid and whose foreground the segmentation
  labelled with a mean softmax probability below ``empty_confidence``: debris drawn above the
  base or below the apex (:mod:`acdctool.correct.empty`); an empty mask is otherwise never a
  candidate. Needs the input's ``probs`` (the output's config says ``empty_used``);
- ``repair`` (a fallback only, after ``empty``): the input itself mended by minimal pixel edits
  aimed at the failing criteria (holes filled, LV fragments joined by their convex hull, a MYO
  ring closed around the LV, RV fragments bridged; :mod:`acdctool.correct.repair`), taken
  where the result is valid and its expected Dice under the segmentation's softmax is at least
  ``repair_agreement`` times the input's. At every position (``fallback_positions`` does not
  bind it: the softmax is its guard). Needs the input's ``probs`` (``repair_used``);
- with ``polish`` (off by default), each offered candidate but ``morph`` and the
  per-structure edits is offered again after the morphological clean-up (family
  ``<family>+polish``).

Families in ``fallback`` form a second tier: they are offered only to the slices for which the
``candidates`` families hold no valid candidate, so they add corrections without displacing
any first-tier choice (the per-structure edits of a fallback source are fallback too), and
only on slices whose position (thirds of the stack: ``base``, ``mid``, ``apex``) is in
``fallback_positions`` (``repair`` excepted). By default the fallback is ``smooth``, then
``empty``, then ``repair``.

Method ``morph`` has one candidate, the clean-up (largest component per class, holes filled;
family ``morph``).

**Choice** (``choose``; :mod:`acdctool.correct.scores`): ``mask`` ranks by mean Dice with the input mask;
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

The gate, the candidates and the choice live in the library (:mod:`acdctool.correct`: the gate
in :mod:`acdctool.correct.gate`, the NVAE's candidates in :mod:`acdctool.correct.nvae_proposer`,
the baseline in :mod:`acdctool.correct.morph`), shared with ``predict --nvae``; this stage reads
and writes the files and gives every patient its NVAE.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acdctool.config import Choose, Context, Family, Gate, Method, RefineConfig, config_to_dict
from acdctool.conventions import slice_position
from acdctool.correct import morph
from acdctool.correct.empty import stack_ends
from acdctool.correct.gate import REASONS, Candidates, GateResult, Proposer, closest_valid, gate, merge_results
from acdctool.errors import BadInputError, ConfigError, FileKindError
from acdctool.io.slices import INDEX_COLUMNS, SliceFile, SliceWriter
from acdctool.metrics import overlap
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance
from acdctool.stages.refine.assign import TEST_POLICY, Assignment, assign

# the gate's names stay importable from here (refine's API before they moved to acdctool.correct)
__all__ = [
    "COLUMNS",
    "REASONS",
    "Candidates",
    "GateResult",
    "Inputs",
    "Proposer",
    "Result",
    "closest_valid",
    "gate",
    "run",
]

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
        needs_probs = config.choose != Choose.MASK.value
        if needs_probs and not f.has("probs"):
            raise BadInputError(
                f"{src}: --choose {config.choose} needs the segmentation's probabilities ('probs'), which this "
                "file lacks: run gen-seg with --save-probs (make-3gram carries them), or use --choose mask"
            )
        # the smooth, empty and repair families use the softmax where the file has one, skipped where not
        with_probs = needs_probs or (bool(config.softmax_families) and f.has("probs"))
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
        where = zip(index["slice"], index["n_slices"], strict=True)
        fallback_rows = np.array([slice_position(s, n) in config.fallback_positions for s, n in where], dtype=bool)
        ends = stack_ends(index["slice"].to_numpy(), index["n_slices"].to_numpy())
        result = Result(out, counts=dict.fromkeys(REASONS, 0))
        families: Counter[str] = Counter()
        tracker = Tracker(progress, len(f), "rows")
        stored = {
            **config_to_dict(config),
            "nvae": infos,
            "nvae_test_policy": TEST_POLICY if infos else None,
            "input_config": f.config,
            "input_kind": f.kind,
            # smooth_used, empty_used, repair_used: whether each softmax family could act
            **{
                f"{fam.value}_used": with_probs and fam.value in config.softmax_families
                for fam in (Family.SMOOTH, Family.EMPTY, Family.REPAIR)
            },
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
                                fallback_rows=fallback_rows[rows][sel],
                                stack_ends=ends[rows][sel],
                            ),
                        )
                    )
                g = merge_results(parts, len(masks))
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
    from acdctool.correct.nvae_proposer import NvaeProposer

    proposers = [NvaeProposer.load(p, config, image_shape=f.shape, path_for_errors=f.path) for p in nvaes]
    return proposers, [p.info for p in proposers]


def _assign(config: RefineConfig, proposers: list[Any], index: Any) -> Assignment:
    patients, folds = index.patient.to_numpy(), index.fold.to_numpy()
    if proposers[0].patients is None:  # morph: no model to have seen anyone
        return Assignment(np.zeros(len(index), np.int64), np.zeros(len(index), np.int8))
    return assign(patients, folds, [p.patients for p in proposers], config.allow_seen)


def _label(proposer: Any) -> str:
    return "" if proposer.patients is None else proposer.patients.label
