"""One frozen dataclass per stage: the single home of every default.

CLI options map one-to-one onto these fields; the resolved config is stored (as JSON) in every
output file and checkpoint, so a result can always be traced back to the settings that made it.
Later stages add their own dataclass here.

Options with a fixed set of values have an ``Enum`` of ``str`` here (:class:`Arch`, :class:`Roi`,
...), the single home of those values: the CLI offers them as choices (tab completion, typos
fail with exit 2 before anything heavy is imported), the dataclasses keep plain strings (so the
stored config is plain JSON) and check them against the same enum.

Every config first runs :func:`check_fields`: each field has the type its annotation says,
every float is finite (``--temperature nan`` or ``--lr inf`` is a usage error, not a silent
run) and every integer lies within the class's ``_LIMITS`` (``--batch-size 99999999999`` is
refused before anything is allocated).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, TypeVar

from acdctool.conventions import POSITIONS, Device, check_device
from acdctool.errors import ConfigError


class Arch(str, Enum):
    """``train-seg --arch``: the segmentation nets (:mod:`acdctool.models.seg`)."""

    UNET = "unet"
    RESUNET = "resunet"
    ATTUNET = "attunet"
    SWINUNETR = "swinunetr"


class LrSchedule(str, Enum):
    """``train-seg --lr-schedule``."""

    CONSTANT = "constant"
    COSINE = "cosine"


class Roi(str, Enum):
    """``prep --roi``: where the square crop goes."""

    GT = "gt"
    CENTER = "center"
    HEART = "heart"


class MaskInterp(str, Enum):
    """``prep --mask-interp``: how masks are resized."""

    SMOOTH = "smooth"
    NEAREST = "nearest"


class NonFinite(str, Enum):
    """``prep --nonfinite``: what to do with NaN/inf image voxels inside the crop."""

    ERROR = "error"
    ZERO = "zero"


class Masks(str, Enum):
    """Which masks of a slice file: ``make-3gram --source``, ``export --array``."""

    PRED = "pred"
    GT = "gt"


class NvaeInput(str, Enum):
    """``train-nvae --input``: what the NVAE sees (ground truth, or gen-seg masks)."""

    GT = "gt"
    SEG = "seg"


class Precision(str, Enum):
    """``train-nvae --precision``: arithmetic of the forward pass."""

    FP32 = "fp32"
    BF16 = "bf16"


class Context(str, Enum):
    """``train-nvae --context``, ``refine --context``: the current mask alone, or with its neighbours."""

    NONE = "none"
    TRIGRAM = "3gram"


class Method(str, Enum):
    """``refine --method``."""

    NVAE = "nvae"
    MORPH = "morph"


class Gate(str, Enum):
    """``refine --gate``."""

    ANATOMY = "anatomy"
    NONE = "none"


class Choose(str, Enum):
    """``refine --choose``: how the gate ranks the valid candidates of an invalid slice."""

    MASK = "mask"
    SOFT_DICE = "soft-dice"
    LOGLIK = "loglik"


class Family(str, Enum):
    """``refine --candidates``: the candidate families the gate may choose from."""

    RECON = "recon"
    PARTIAL = "partial"
    STRUCTURE = "structure"
    LATENT = "latent"
    SAMPLES = "samples"
    MORPH = "morph"
    SMOOTH = "smooth"
    EMPTY = "empty"
    """The empty slice, a fallback only (after every other tier): a slice at either end of its
    stack that nothing else made valid and whose foreground the segmentation labelled with a
    mean softmax probability below ``RefineConfig.empty_confidence``
    (:mod:`acdctool.correct.empty`)."""
    REPAIR = "repair"
    """Minimal pixel repairs of the input itself, a fallback only (the very last tier, after
    ``empty``, at every position): taken where they make the slice valid and the
    segmentation's softmax agrees with them almost as well as with the input (expected Dice at
    least ``RefineConfig.repair_agreement`` times the input's; :mod:`acdctool.correct.repair`)."""


def choices(enum: type[Enum]) -> tuple[str, ...]:
    """The values of a choice enum, in order.

    >>> choices(Gate)
    ('anatomy', 'none')
    """
    return tuple(str(m.value) for m in enum)


SEED_MAX = 2**32 - 1
"""Largest ``--seed`` (NumPy's seeds are 32-bit)."""
_OPTION_NAMES = {"betas": "--beta", "net_args": "--net-arg", "partial": "--partial", "write_4d": "--4d"}
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "int | None": (int, type(None)),
    "str | None": (str, type(None)),
}
_ITEM_TYPES: dict[str, tuple[type, ...]] = {
    "tuple[int, ...]": (int,),
    "tuple[float, ...]": (int, float),
    "tuple[str, ...]": (str,),
}


def option_name(field_name: str) -> str:
    """The CLI option of a config field, e.g. ``batch_size`` → ``--batch-size``.

    >>> option_name("batch_size"), option_name("betas")
    ('--batch-size', '--beta')
    """
    return _OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def check_fields(config: Any) -> None:
    """Refuse a field of the wrong type, a float that is NaN or infinite, or an integer outside
    ``config._LIMITS[name]`` (inclusive bounds); run first by every config's ``__post_init__``.

    Raises:
        ConfigError: naming the option.

    Example:
        >>> RefineConfig(temperature=float("nan"))
        Traceback (most recent call last):
        acdctool.errors.ConfigError: --temperature must be a finite number, got nan
    """
    limits: dict[str, tuple[int, int]] = getattr(config, "_LIMITS", {})
    for f in dataclasses.fields(config):
        value, option = getattr(config, f.name), option_name(f.name)
        kind = str(f.type)
        if kind in _TYPES:
            ok = isinstance(value, _TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))
            items: tuple[Any, ...] = (value,)
        elif kind in _ITEM_TYPES:
            ok = isinstance(value, tuple) and all(
                isinstance(v, _ITEM_TYPES[kind]) and not isinstance(v, bool) for v in value
            )
            items = value if ok else ()
        else:
            ok, items = True, ()
        if not ok:
            raise ConfigError(f"{option}: expected {kind}, got {value!r}")
        for v in items:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{option} must be a finite number, got {v}")
            if isinstance(v, int) and f.name in limits:
                lo, hi = limits[f.name]
                if not lo <= v <= hi:
                    raise ConfigError(f"{option} must be within {lo}..{hi}, got {v}")


def check_choice(option: str, value: str, enum: type[Enum]) -> None:
    """Refuse a value that is not one of ``enum``'s (``option`` names it, e.g. ``--roi``).

    Raises:
        ConfigError: naming the option and the allowed values.
    """
    allowed = choices(enum)
    if value not in allowed:
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic ACDC-format phantoms (``acdctool synth``).

    Patients cycle through ``GROUPS`` so any multiple of 5 is balanced. Everything random is
    drawn from one generator seeded with ``seed`` (per patient), so output is deterministic.
    """

    patients: int = 10
    """Patients written under ``training/``."""
    test_patients: int = 0
    """Patients written under ``testing/`` (split ``test`` after prep)."""
    seed: int = 0
    frames: int = 12
    """Cine frames per cycle (``NbFrame``); ED is frame 1, ES is drawn near 40% of the cycle."""
    write_4d: bool = False
    """Also write ``patientNNN_4d.nii.gz`` (all frames) for every patient."""
    first_id: int = 1
    """Number of the first patient (``patient001`` by default)."""

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "patients": (0, 999),
        "test_patients": (0, 999),
        "seed": (0, SEED_MAX),
        "frames": (4, 1000),
        "first_id": (1, 999),
    }

    def __post_init__(self) -> None:
        check_fields(self)
        if self.patients < 0 or self.test_patients < 0:
            raise ConfigError("patient counts must be >= 0")
        if self.patients + self.test_patients == 0:
            raise ConfigError("nothing to write: --patients and --test-patients are both 0")
        if self.frames < 4:
            raise ConfigError(f"--frames must be >= 4, got {self.frames}")
        if self.first_id < 1 or self.first_id + self.patients + self.test_patients > 1000:
            raise ConfigError("patient numbers must stay within 1..999")


@dataclass(frozen=True)
class PrepConfig:
    """ACDC folder to HDF5 slice dataset (``acdctool prep``)."""

    size: int = 128
    """Output in-plane size (px); the crop is square, so proportions are kept."""
    roi: str = Roi.GT.value
    """``gt``: square box around the ground-truth heart plus a margin; ``center``: a fixed
    physical square (``roi_mm``) around the image centre (no ground truth needed); ``heart``:
    that square centred on the ground-truth heart, which ``predict`` reproduces without ground
    truth (centred on the heart it segments; :mod:`acdctool.data.crop_rule`)."""
    margin: float = 0.25
    """``roi=gt``: margin added on each side, as a fraction of the heart's larger extent."""
    roi_mm: float = 200.0
    """``roi=center`` and ``roi=heart``: side of the square crop in mm."""
    mask_interp: str = MaskInterp.SMOOTH.value
    """``smooth``: resize each label's one-hot channel linearly and take the argmax (keeps
    anatomy valid, SPEC §3); ``nearest``: nearest-neighbour on the label map."""
    low_percentile: float = 1.0
    high_percentile: float = 99.0
    val_fraction: float = 0.2
    """Fraction of each group of ``training/`` patients put in the ``val`` split."""
    folds: int = 5
    """Fold ids 0..folds-1 for ``training/`` patients, stratified by group."""
    seed: int = 0
    skip_bad: bool = False
    """Continue past broken patients and list them at the end instead of failing."""
    workers: int = 2
    """Patients processed concurrently (threads); output is identical for any value."""
    nonfinite: str = NonFinite.ERROR.value
    """NaN/inf image voxels inside the crop: ``error`` (refuse, naming file and slice) or
    ``zero`` (set them to 0 before normalising). Outside the crop they never matter."""

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "size": (16, 1024),
        "folds": (1, 100),
        "seed": (0, SEED_MAX),
        "workers": (1, 256),
    }

    def __post_init__(self) -> None:
        check_fields(self)
        if self.size < 16 or self.size > 1024:
            raise ConfigError(f"--size must be within 16..1024, got {self.size}")
        check_choice("--roi", self.roi, Roi)
        check_choice("--mask-interp", self.mask_interp, MaskInterp)
        check_choice("--nonfinite", self.nonfinite, NonFinite)
        if not 0 <= self.margin <= 2:
            raise ConfigError(f"--margin must be within 0..2, got {self.margin}")
        if self.roi_mm <= 0:
            raise ConfigError(f"--roi-mm must be > 0, got {self.roi_mm}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ConfigError("percentiles must satisfy 0 <= low < high <= 100")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be within [0, 1), got {self.val_fraction}")
        if self.folds < 1:
            raise ConfigError(f"--folds must be >= 1, got {self.folds}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of predicted masks against ground truth (``acdctool eval``)."""

    threshold: float = 0.01
    """With a baseline: a row improved (deteriorated) when its mean Dice rose (fell) by more."""
    worse_threshold: float = 0.05
    """With a baseline: also count slices better (worse) by more than this, in mean Dice and per
    class (the harm a correction may do)."""
    top_k: int = 8
    """Rows shown in the montages of most improved / most deteriorated (or worst) slices."""
    plots: bool = True
    """Write the PNG figures (violin, histogram, scatter, montages)."""
    hausdorff: bool = True
    """Compute Hausdorff distance and HD95 (the slowest metric; off for quick looks)."""
    workers: int = 2
    """Processes for the per-slice metrics; the result is identical for any value."""
    labels: str | None = None
    """Native evaluation of NIfTI folders: label map of the predictions (a dataset.json or
    ``RV=1,MYO=2,LV=3``); None: a dataset.json in (or above) the folder, else ACDC's coding."""
    gt_labels: str | None = None
    """Native evaluation: label map of the ground truth, as ``labels``."""

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"top_k": (0, 10_000), "workers": (1, 256)}

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"--threshold must be within [0, 1), got {self.threshold}")
        if not 0 <= self.worse_threshold < 1:
            raise ConfigError(f"--worse-threshold must be within [0, 1), got {self.worse_threshold}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0, got {self.top_k}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class NgramConfig:
    """Neighbour context for the 3-gram NVAE (``acdctool make-3gram``)."""

    source: str = Masks.PRED.value
    """Masks stacked as context: ``pred`` (a segmentation output) or ``gt`` (ground truth)."""

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("--source", self.source, Masks)


@dataclass(frozen=True)
class RefineConfig:
    """Correction of segmentations (``acdctool refine``); the rules are in :mod:`acdctool.stages.refine`."""

    method: str = Method.NVAE.value
    """``nvae``: NVAE reconstruction (needs ``--nvae``); ``morph``: per class, keep the largest
    connected component and fill holes (nnU-Net's / vital's post-processing, the baseline)."""
    context: str = Context.NONE.value
    """``none``: the NVAE sees the current mask (4 channels); ``3gram``: previous/current/next
    masks (12 channels, needs a make-3gram file and a 3-gram NVAE)."""
    gate: str = Gate.ANATOMY.value
    """``anatomy``: keep anatomically valid slices bit-identical, replace invalid ones by the
    valid candidate that agrees best with the segmentation (``choose``); ``none``: replace
    every slice by the NVAE's posterior-mean reconstruction."""
    choose: str = Choose.MASK.value
    """How the gate ranks valid candidates: ``mask``, mean Dice with the input mask;
    ``soft-dice``, expected Dice under the segmentation's softmax; ``loglik``, geometric mean
    of the softmax probability of the candidate's labels (both need ``probs``: gen-seg
    ``--save-probs``)."""
    candidates: tuple[str, ...] = (
        Family.MORPH.value,
        Family.RECON.value,
        Family.PARTIAL.value,
        Family.STRUCTURE.value,
        Family.SAMPLES.value,
    )
    """Candidate families offered to the gate (:class:`Family` values): ``morph``, ``recon``,
    ``partial``, ``structure``, ``latent``, ``samples`` (only with ``samples`` > 0), ``smooth``
    (only when the input has ``probs``). ``latent`` is off by default: it costs one decoding
    per step and invalid slice."""
    fallback: tuple[str, ...] = (Family.SMOOTH.value, Family.EMPTY.value, Family.REPAIR.value)
    """Candidate families offered only to the slices for which ``candidates`` hold no valid one
    (a second tier: they cannot displace a first-tier choice; ``empty`` then ``repair`` always
    come last). Not also in ``candidates``. ``smooth``, ``empty`` and ``repair`` by default: on
    the five-fold out-of-fold masks each corrected slices that nothing else made valid while
    every class's Dice rose (README); all three need the input's ``probs`` and are skipped
    without them."""
    partial: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
    """Partial edits offered to the gate: per threshold t, the input with only the pixels whose
    input label the NVAE gives a probability below t replaced by the NVAE's label (small t:
    small edits). Empty: whole reconstructions only."""
    latent_steps: tuple[float, ...] = (0.25, 0.5, 0.75)
    """Latent steps: per α, every latent group decoded at (1 − α) · posterior mean + α · prior
    mean, a path from the input's own encoding (α = 0, the reconstruction) towards the NVAE's
    mean shape (α = 1)."""
    fallback_positions: tuple[str, ...] = ("base", "apex")
    """Slice positions (thirds of the stack: ``base``, ``mid``, ``apex``) whose slices the
    ``fallback`` tier may correct. Not ``mid`` by default: on the five-fold out-of-fold masks,
    the mid slices that no first-tier candidate made valid were never improved by a fallback
    (smoothed softmax 0 better / 5 worse, latent steps 0 / 12; README)."""
    smooth: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0)
    """Family ``smooth``: per σ (px), the argmax of the segmentation's softmax smoothed by a
    Gaussian of that standard deviation, cleaned up (:mod:`acdctool.correct.smooth`)."""
    empty_confidence: float = 0.75
    """Family ``empty``: a slice at either end of its stack that no other candidate made valid
    is emptied when the mean softmax probability of its labels over its foreground pixels is
    below this (needs the input's ``probs``; 0: never). Chosen on the five-fold out-of-fold
    masks among 0.7, 0.75 and 0.8 (README): 0.8 passed the 1% harm limit."""
    repair_agreement: float = 0.8
    """Family ``repair``: a repaired slice replaces the input only when its expected Dice under
    the segmentation's softmax is at least this times the input's own (0: whenever the repair
    is valid). Chosen on the five-fold out-of-fold masks among 0.75, 0.8 and 0.85 (README): the
    lowest that kept the harm within the issue's limits (0.75 did not)."""
    samples: int = 0
    """Extra candidates decoded by sampling the posterior (on top of its mean), for the gate."""
    temperature: float = 0.7
    """Scale of the posterior standard deviations when sampling candidates."""
    min_agreement: float = 0.0
    """Gate: a candidate's score under ``choose`` (in [0, 1]) must be at least this to replace
    the input."""
    min_structure_dice: float = 0.8
    """Gate: a candidate that keeps a structure of the input (RV, MYO or LV in both) must agree
    with it at least this much (that structure's Dice with the input's); removing a structure
    or adding one is not limited by it. Corrections that redraw or keep only a fraction of a
    structure are the ones that most often harm: chosen on the five-fold out-of-fold masks
    (0, 0.3, 0.5, 0.7, 0.8, 0.9; README), 0 turns it off."""
    polish: bool = False
    """Also offer each NVAE candidate (not the per-structure edits) after the morphological
    clean-up (stray pixels removed, holes filled) to the gate. Off by default: on the five-fold
    out-of-fold UNet masks the polished partial edits were the family most often worse by
    > 0.05 (24 of 166 slices), and with them MYO volume Dice fell below the input's (README)."""
    allow_seen: bool = False
    """Refine patients with an NVAE that trained on them (recorded per row); refused otherwise."""
    batch_size: int = 64
    device: str = Device.AUTO.value
    seed: int = 0

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "samples": (0, 1000),
        "batch_size": (1, 65_536),
        "seed": (0, SEED_MAX),
    }

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("--method", self.method, Method)
        check_choice("--context", self.context, Context)
        check_choice("--gate", self.gate, Gate)
        check_choice("--choose", self.choose, Choose)
        for family in self.candidates:
            check_choice("--candidates", family, Family)
        if not self.candidates:
            raise ConfigError(f"--candidates needs at least one of {', '.join(choices(Family))}")
        for family in self.fallback:
            check_choice("--fallback", family, Family)
        for last in (Family.EMPTY.value, Family.REPAIR.value):
            if last in self.candidates:
                raise ConfigError(f"--candidates {last}: a last resort, only in --fallback")
        if not 0 <= self.repair_agreement <= 1:
            raise ConfigError(f"--repair-agreement must be within [0, 1], got {self.repair_agreement}")
        if not 0 <= self.empty_confidence <= 1:
            raise ConfigError(f"--empty-confidence must be within [0, 1], got {self.empty_confidence}")
        both = [f for f in self.fallback if f in self.candidates]
        if both:
            raise ConfigError(f"--fallback {','.join(both)}: already in --candidates (a family is in one tier)")
        check_device(self.device)
        if self.samples < 0 or self.batch_size < 1:
            raise ConfigError("--samples must be >= 0 and --batch-size >= 1")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement must be within [0, 1], got {self.min_agreement}")
        if not 0 <= self.min_structure_dice <= 1:
            raise ConfigError(f"--min-structure-dice must be within [0, 1], got {self.min_structure_dice}")
        if any(not 0 < t <= 1 for t in self.partial):
            raise ConfigError(f"--partial thresholds must be within (0, 1], got {','.join(map(str, self.partial))}")
        for pos in self.fallback_positions:
            if pos not in POSITIONS:
                raise ConfigError(f"--fallback-positions: {pos!r} is not one of {', '.join(POSITIONS)}")
        if any(not 0 < v <= 32 for v in self.smooth):
            raise ConfigError(f"--smooth sigmas must be within (0, 32] px, got {','.join(map(str, self.smooth))}")
        if any(not 0 < a <= 1 for a in self.latent_steps):
            raise ConfigError(f"--latent-steps must be within (0, 1], got {','.join(map(str, self.latent_steps))}")
        if self.method == Method.MORPH.value and (self.context != Context.NONE.value or self.samples):
            raise ConfigError("--method morph takes no --context or --samples (they are NVAE options)")

    @property
    def families(self) -> tuple[str, ...]:
        """Every family a proposer makes: ``candidates`` then ``fallback``."""
        return (*self.candidates, *self.fallback)

    @property
    def softmax_families(self) -> tuple[str, ...]:
        """The families this config uses that are made from the segmentation's softmax
        (``smooth``, ``empty``, ``repair``, whose guard is the softmax's agreement): only with the
        NVAE method, and skipped where the input has no ``probs``.

        Example:
            >>> RefineConfig().softmax_families, RefineConfig(method="morph").softmax_families
            (('smooth', 'empty', 'repair'), ())
        """
        if self.method != Method.NVAE.value:
            return ()
        made = (Family.SMOOTH.value, Family.EMPTY.value, Family.REPAIR.value)
        return tuple(f for f in self.families if f in made)


class QcFeatures(str, Enum):
    """``qc-calibrate --features``: which feature groups the QC model may use."""

    MASK = "mask"
    PROBS = "probs"
    NVAE = "nvae"


class PatientDice(str, Enum):
    """``qc --patient-dice``: which Dice of a patient flags and ranks it."""

    VOLUME = "volume"
    """The 3D Dice per volume (the ACDC challenge's, ``pred_vdice``), where the calibration has
    a volume model; else the mean of the slices'."""
    SLICES = "slices"
    """The mean of the slices' Dice (``pred_dice``)."""


@dataclass(frozen=True)
class QcConfig:
    """Quality control without ground truth (``acdctool qc``)."""

    flag_below: float = 0.8
    """Flag slices whose predicted Dice is below this (uncalibrated: risk at least 1 − this)."""
    flag_patient_below: float = 0.85
    """Flag patients whose predicted Dice is below this (uncalibrated: mean risk at least 1 − this)."""
    patient_dice: str = PatientDice.VOLUME.value
    """The patient Dice that ``flag_patient_below`` applies to (:class:`PatientDice`)."""
    use_probs: bool = True
    """Use the file's ``probs`` (entropy, margin, soft Dice) when it has them."""
    batch_size: int = 32
    """Slices per NVAE forward pass (and per read)."""
    device: str = Device.AUTO.value
    workers: int = 2
    """Processes for the anatomical criteria, beside the NVAE and probability signals; the
    result is identical for any value."""
    plots: bool = True
    """Write the figure (predicted vs true Dice with ground truth, else a histogram)."""

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"batch_size": (1, 65_536), "workers": (1, 256)}

    def __post_init__(self) -> None:
        check_fields(self)
        for name, value in (("--flag-below", self.flag_below), ("--flag-patient-below", self.flag_patient_below)):
            if not 0 <= value <= 1:
                raise ConfigError(f"{name} must be within [0, 1], got {value}")
        check_choice("--patient-dice", self.patient_dice, PatientDice)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        check_device(self.device)


@dataclass(frozen=True)
class QcCalibrateConfig:
    """Fit the QC combination on files with ground truth, out of fold (``acdctool qc-calibrate``)."""

    features: tuple[str, ...] = ()
    """Feature groups the model may use (``mask``, ``probs``, ``nvae``); empty: all the
    inputs provide (probs when every file has them, NVAE with ``--nvae``)."""
    alpha: float = 1.0
    """Ridge penalty on the standardised coefficients."""
    boost: bool = True
    """Also fit gradient-boosted trees (:mod:`acdctool.qc.boost`) and average them with the
    slice model's median, kept only if the blend predicts better out of fold."""
    slice_threshold: float = 0.8
    """A slice with mean Dice below this is a bad one to detect (scores)."""
    patient_threshold: float = 0.85
    """A patient with mean Dice below this is a bad one to detect (scores)."""
    use_probs: bool = True
    batch_size: int = 32
    device: str = Device.AUTO.value
    workers: int = 2
    """Processes for the anatomical criteria; the result is identical for any value."""

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"batch_size": (1, 65_536), "workers": (1, 256)}

    def __post_init__(self) -> None:
        check_fields(self)
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        for f in self.features:
            check_choice("--features", f, QcFeatures)
        if not self.alpha >= 0:
            raise ConfigError(f"--alpha must be >= 0, got {self.alpha}")
        for name, value in (
            ("--slice-threshold", self.slice_threshold),
            ("--patient-threshold", self.patient_threshold),
        ):
            if not 0 < value <= 1:
                raise ConfigError(f"{name} must be within (0, 1], got {value}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_device(self.device)


@dataclass(frozen=True)
class ExportConfig:
    """Masks back to NIfTI in the original geometry (``acdctool export``)."""

    array: str | None = None
    """Masks to export: ``pred`` or ``gt``; None: ``pred`` when the file has it, else ``gt``."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.array is not None:
            check_choice("--array", self.array, Masks)


@dataclass(frozen=True)
class InfoConfig:
    """Summary of a slice file (``acdctool info``): no settings; here so every stage takes a config."""


C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a config dataclass, tagged with its class name."""
    data = dataclasses.asdict(config)
    data["_config"] = type(config).__name__
    return data


def config_to_json(config: Any) -> str:
    return json.dumps(config_to_dict(config), sort_keys=True)


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a config dataclass from a stored dict, ignoring keys it does not know.

    Raises:
        ConfigError: the dict was made from another config class.
    """
    tag = data.get("_config")
    if tag is not None and tag != cls.__name__:
        raise ConfigError(f"stored config is a {tag}, expected {cls.__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return cls(**kwargs)


@dataclass(frozen=True)
class TrainSegConfig:
    """Train one MONAI segmentation net (``acdctool train-seg``); report defaults (SPEC §2)."""

    arch: str = Arch.UNET.value
    """``unet``, ``resunet`` (UNet, 2 residual units per level), ``attunet`` or ``swinunetr``."""
    net_args: tuple[str, ...] = ()
    """``KEY=VALUE`` overrides of the net's constructor arguments, e.g. ``channels=8,16,32``."""
    fold: int | None = None
    """Held-out fold: train on split ``train`` patients of the other folds, validate on this
    fold's patients. None: train on split ``train``, validate on split ``val``."""
    epochs: int = 100
    batch_size: int = 16
    """Slices per step and per process (DDP multiplies it by the process count)."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    lr_schedule: str = LrSchedule.CONSTANT.value
    """``constant`` (the report) or ``cosine`` (annealed to 0 over ``epochs``)."""
    augment: bool = True
    """Random flips, ±15° rotation, ×1.1 zoom, gamma and intensity changes."""
    seed: int = 0
    device: str = Device.AUTO.value
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    amp: bool = True
    """bf16 autocast on CUDA (never on CPU)."""
    workers: int = 0
    """DataLoader worker processes (0: load in the training process; fine with ``cache``)."""
    cache: bool = True
    """Load the selected rows into memory once instead of reading the file every step."""
    tensorboard: bool = False
    """Also write TensorBoard event files under ``RUN_DIR/tb`` (needs the tensorboard package)."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0: off)."""

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "fold": (0, 100),
        "epochs": (1, 100_000),
        "batch_size": (1, 65_536),
        "seed": (0, SEED_MAX),
        "workers": (0, 256),
    }

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("--arch", self.arch, Arch)
        if self.fold is not None and self.fold < 0:
            raise ConfigError(f"--fold must be >= 0, got {self.fold}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("--epochs and --batch-size must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("--lr must be > 0; --weight-decay and --grad-clip >= 0")
        check_choice("--lr-schedule", self.lr_schedule, LrSchedule)
        check_device(self.device)
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class GenSegConfig:
    """Segment every slice with trained nets, out-of-fold (``acdctool gen-seg``)."""

    batch_size: int = 64
    """Slices per forward pass."""
    device: str = Device.AUTO.value
    amp: bool = True
    """bf16 autocast on CUDA (never on CPU)."""
    save_probs: bool = False
    """Also store the softmax probabilities, float16 ``probs`` (N, 4, H, W)."""

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"batch_size": (1, 65_536)}

    def __post_init__(self) -> None:
        check_fields(self)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_device(self.device)


@dataclass(frozen=True)
class TrainNvaeConfig:
    """Train the NVAE shape model on masks (``acdctool train-nvae``).

    Defaults: the report's model and loss (SPEC §2), with the schedule shortened to 30 epochs
    and a 1,500-step KL warm-up (about 30 minutes on one core of a 2-core CPU; the five-fold ``refine``
    priors of the README were trained so). The report's schedule: ``epochs=100,
    warmup_steps=6420``. For the shape model itself (reconstructions above the report's on
    every class in 12 epochs), ``betas=(8, 10, 1), dice_weight=500, epochs=12,
    warmup_steps=1000``: a worse prior for ``refine`` (README).
    """

    input: str = NvaeInput.GT.value
    """``gt``: auto-encode ground-truth masks; ``seg``: denoise (gen-seg masks in, ground truth out)."""
    context: str = Context.NONE.value
    """``3gram``: previous/current/next masks in (12 channels, a make-3gram file), ground-truth
    current slice out."""
    stem_channels: int = 4
    scales: int = 3
    groups_per_scale: tuple[int, ...] = (4, 2, 1)
    """Latent groups per scale, top (coarsest) scale first."""
    latent_channels: int = 20
    se_reduction: int = 8
    """Channel reduction factor of the squeeze-excitation blocks."""
    betas: tuple[float, ...] = (8.0, 10.0, 11.0)
    """KL weight per scale, top scale first (the report's grid-searched β)."""
    warmup_steps: int = 1500
    """Linear KL warm-up, optimiser steps (the report's: 6420)."""
    kl_balance: bool = True
    """Balance the KL across groups during warm-up (NVAE paper)."""
    dice_weight: float = 0.0
    """Weight of a soft-Dice term added to the cross-entropy reconstruction."""
    sr_weight: float = 0.0
    """Spectral regularisation λ (0: off, as in the report)."""
    fold: int | None = None
    """Train on the other folds' train patients, validate on this fold; None: train/val split."""
    epochs: int = 30
    """Total epochs (the report's: 100)."""
    batch_size: int = 8
    lr: float = 1e-2
    lr_min: float = 1e-4
    lr_warmup_steps: int = 200
    """Linear learning-rate warm-up before the cosine annealing to ``lr_min``."""
    weight_decay: float = 3e-4
    eps: float = 1e-3
    """Adamax epsilon."""
    augment: bool = True
    """Small rotations and zooms of the masks (no flips: a mirrored heart is not a plausible shape)."""
    seed: int = 0
    device: str = Device.AUTO.value
    precision: str = Precision.FP32.value
    """``fp32``, or ``bf16``: bf16 autocast of the forward pass on CPU (AMX) and CUDA; the KL
    and the loss stay fp32."""
    compile: bool = True
    """Compile the training step with ``torch.compile`` (minutes on the first step, then a
    faster step); falls back to eager, with one line on stderr, where compilation fails. On
    CPU it also builds (once per machine, into ``~/.cache/acdctool``) and uses the NVAE's C++
    kernels (:mod:`acdctool.models.nvae_kernels`); without a C++ compiler and ninja it says so
    in one line and uses torch's ops, with the same results."""
    workers: int = 0
    cache: bool = True
    tensorboard: bool = False
    grad_clip: float = 200.0
    """Gradient-norm clip (0: off); a safety net for early KL spikes."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights, updated every optimiser step,
    that validation and ``best.pt`` use (0: off, the live weights as in the report)."""

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "stem_channels": (1, 1024),
        "scales": (1, 8),
        "groups_per_scale": (1, 64),
        "latent_channels": (1, 1024),
        "se_reduction": (1, 1024),
        "warmup_steps": (0, 10**9),
        "fold": (0, 100),
        "epochs": (1, 100_000),
        "batch_size": (1, 65_536),
        "lr_warmup_steps": (0, 10**9),
        "seed": (0, SEED_MAX),
        "workers": (0, 256),
    }

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("--input", self.input, NvaeInput)
        check_choice("--context", self.context, Context)
        check_choice("--precision", self.precision, Precision)
        if len(self.groups_per_scale) != self.scales:
            raise ConfigError(f"--groups-per-scale has {len(self.groups_per_scale)} values for --scales {self.scales}")
        if len(self.betas) != self.scales:
            raise ConfigError(f"--beta has {len(self.betas)} values for --scales {self.scales} (one per scale)")
        if min(self.groups_per_scale, default=0) < 1 or self.latent_channels < 1 or self.stem_channels < 1:
            raise ConfigError("group counts, --latent-channels and --stem-channels must be >= 1")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("--epochs and --batch-size must be >= 1")
        if not (self.lr > 0 and 0 < self.lr_min <= self.lr and self.eps > 0):
            raise ConfigError("need --lr > 0, 0 < --lr-min <= --lr and --eps > 0")
        if min(self.warmup_steps, self.lr_warmup_steps, self.workers) < 0 or self.weight_decay < 0:
            raise ConfigError("warm-up steps, --workers and --weight-decay must be >= 0")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"--ema must lie in [0, 1), got {self.ema}")
        check_device(self.device)


class ImportRoi(str, Enum):
    """``import-seg --roi``: where the crop goes, without ground truth."""

    PRED = "pred"
    HEART = "heart"
    CENTER = "center"


@dataclass(frozen=True)
class ImportSegConfig:
    """Predictions made elsewhere (NIfTI) → a ``seg`` slice file (``acdctool import-seg``).

    Crop, resize and normalisation follow prep (same defaults), but the crop is placed without
    ground truth.
    """

    roi: str = ImportRoi.PRED.value
    """``pred``: prep's ``--roi gt`` box placed around the *predicted* heart (the largest
    component of the foreground of all frames and models of a patient), the crop NVAEs trained
    on ``prep --roi gt`` expect; ``heart``: a
    ``roi_mm`` square centred on the predicted heart; ``center``: at the image centre. An empty
    prediction falls back to ``center``."""
    margin: float = PrepConfig.margin
    roi_mm: float = PrepConfig.roi_mm
    size: int = PrepConfig.size
    mask_interp: str = PrepConfig.mask_interp
    low_percentile: float = PrepConfig.low_percentile
    high_percentile: float = PrepConfig.high_percentile
    labels: str | None = None
    """Label map of the predictions: a ``dataset.json`` or ``RV=1,MYO=2,LV=3``; None: the
    ``dataset.json`` in (or above) the predictions folder, else ACDC's coding."""
    gt_labels: str | None = None
    """Label map of the ground truth, as ``labels`` (searched beside the ground truth)."""
    model: str = "pred"
    """Model name of predictions whose file names carry none (``_pred``, ``_gt`` or no suffix)."""
    allow_missing: bool = False
    """Skip images without a prediction instead of failing."""
    workers: int = PrepConfig.workers

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"size": (16, 1024), "workers": (1, 256)}

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("--roi", self.roi, ImportRoi)
        check_choice("--mask-interp", self.mask_interp, MaskInterp)
        PrepConfig(
            size=self.size,
            margin=self.margin,
            roi_mm=self.roi_mm,
            low_percentile=self.low_percentile,
            high_percentile=self.high_percentile,
            workers=self.workers,
        )  # the same checks as prep
        if not self.model or not all(ch.isalnum() or ch in "-." for ch in self.model):
            raise ConfigError(f"--model-name must be letters, digits, '-' or '.', got {self.model!r}")

    def prep_config(self) -> PrepConfig:
        """The prep settings that crop, resize and normalise the same way."""
        return PrepConfig(
            size=self.size,
            margin=self.margin,
            roi_mm=self.roi_mm,
            mask_interp=self.mask_interp,
            low_percentile=self.low_percentile,
            high_percentile=self.high_percentile,
            workers=self.workers,
        )


@dataclass(frozen=True)
class PredictConfig:
    """Raw NIfTI images → masks in their original geometry (``acdctool predict``)."""

    frames: tuple[int, ...] = ()
    """4D cines: 1-based frames to segment; empty: every frame. 3D inputs ignore it."""
    tta: bool = True
    """Average the softmax over the 4 flips of each slice (none, rows, columns, both)."""
    passes: int = 3
    """``--roi heart`` models: most segmentations per patient while the crop is re-centred on the
    predicted heart (pass 1 at the image centre)."""
    choose: str = RefineConfig.choose
    """Gate: how valid candidates are ranked (as ``refine --choose``); ``soft-dice`` and
    ``loglik`` use the ensemble's mean softmax."""
    min_agreement: float = RefineConfig.min_agreement
    """Gate: least score under ``choose`` for a correction to replace the net's mask (as ``refine``)."""
    labels: str | None = None
    """Label coding of the written masks: ``RV=1,MYO=2,LV=3`` style or a dataset.json; None: ACDC's."""
    batch_size: int = GenSegConfig.batch_size
    device: str = Device.AUTO.value
    amp: bool = GenSegConfig.amp
    seed: int = 0

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "frames": (1, 10_000),
        "passes": (1, 100),
        "batch_size": (1, 65_536),
        "seed": (0, SEED_MAX),
    }

    def __post_init__(self) -> None:
        check_fields(self)
        if any(f < 1 for f in self.frames):
            raise ConfigError(f"--frames are 1-based, got {','.join(map(str, self.frames))}")
        if self.passes < 1:
            raise ConfigError(f"--passes must be >= 1, got {self.passes}")
        check_choice("--choose", self.choose, Choose)
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement must be within [0, 1], got {self.min_agreement}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_device(self.device)

    def refine_config(self) -> RefineConfig:
        """refine's settings for the NVAE candidates and the gate (its defaults otherwise)."""
        return RefineConfig(
            choose=self.choose,
            min_agreement=self.min_agreement,
            batch_size=self.batch_size,
            device=self.device,
            seed=self.seed,
        )


@dataclass(frozen=True)
class ExportModelConfig:
    """A lean copy of a checkpoint for sharing and inference (``acdctool export-model``)."""

    torchscript: bool = False
    """Write a TorchScript module (seg models only) instead of an acdctool checkpoint."""
