"""``predict``: raw NIfTI images → masks in their original geometry, clinical indices, validity.

No ``Info.cfg`` and no ground truth needed. Inputs are 3D frames (nnU-Net ``CASE_0000``, ACDC
``patientNNN_frameYY`` or any name) or 4D cines (the chosen frames; ``patientNNN_4d`` cines of
patients that also have 3D frame files are left out). Per patient, one shared crop placed with
the rule the nets were trained with (:mod:`acdctool.data.crop_rule`; ``--roi heart``: found by
the nets themselves, :func:`acdctool.models.inference.segment_patient`), the mean softmax of
every checkpoint (a fold ensemble) over four flips, optionally the anatomy-gated NVAE
correction of ``refine`` (:mod:`acdctool.correct`), then the masks mapped back onto the image
grid (:func:`acdctool.io.export.uncrop`) with the image's header and affine.

The output folder holds ``<case>.nii.gz`` (the masks), ``uncorrected/<case>.nii.gz`` (with
``--nvae``: the masks before correction), ``volumes.csv`` (per frame: phase, volumes in mL,
slices, anatomically invalid slices at native resolution, corrected slices, crop),
``clinical.csv`` (per patient: EDV, ESV, EF, MYO mass, validity) and ``predict.json``
(config, checkpoints, crop rule, provenance, notes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from acdctool.config import Choose, PredictConfig, RefineConfig, config_to_dict
from acdctool.conventions import PHASES, resolve_device, slice_position
from acdctool.correct.empty import stack_ends
from acdctool.correct.gate import Proposer, gate, pooled
from acdctool.data.phases import assign_phases
from acdctool.errors import BadInputError, OutputError
from acdctool.io.atomic import atomic_dir
from acdctool.io.export import uncrop
from acdctool.io.labelmap import IDENTITY, label_map_from
from acdctool.io.layouts import Case, acdc_parts, add_info, find_images, parse_name
from acdctool.io.nifti import read_volume, save_mask_like
from acdctool.metrics import anatomy, clinical
from acdctool.models.inference import SegEnsemble, segment_patient
from acdctool.progress import Progress, Tracker
from acdctool.provenance import Provenance, make_provenance


@dataclass(frozen=True)
class Inputs:
    """What predict reads."""

    images: Path
    """A folder of NIfTI images (3D frames and/or 4D cines), or one NIfTI file."""
    models: tuple[Path, ...]
    """Segmentation checkpoints of one architecture (full or lean), e.g. one per fold."""
    nvae: tuple[Path, ...] = ()
    """NVAE checkpoints for the gated correction (their candidates are pooled)."""
    provenance: Provenance | None = None
    """Stored in ``predict.json``; None: made here, without a command line."""


@dataclass
class Result:
    """What predict wrote: the folder, its mask files, the per-frame and per-patient tables, notes."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    volumes: pd.DataFrame = field(default_factory=pd.DataFrame)
    clinical: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Frame:
    case: Case
    path: Path
    t: int | None
    """0-based index into a 4D cine, None for a 3D file."""


def find_frames(images: Path, frames: tuple[int, ...]) -> tuple[list[_Frame], list[str]]:
    """The frames to segment: every 3D image, and the chosen frames of every 4D cine.

    Raises:
        InputMissingError, BadInputError: no images; a frame beyond a cine's length; 2D files.
    """
    import nibabel as nib

    paths = {parse_name(images).key: images} if images.is_file() else find_images(images, cines=True)
    if not paths:
        raise BadInputError(f"{images}: no NIfTI images (.nii.gz) found")
    shapes = {}
    for key, path in paths.items():
        try:
            header_shape = cast(Any, nib.load(str(path))).shape  # the header only: no voxels read
            shape = tuple(d for i, d in enumerate(header_shape) if i < 3 or d > 1)
        except Exception:  # unreadable: read_volume names the file and the problem
            shape = read_volume(path, allow_4d=True).shape
        if len(shape) not in (3, 4):
            read_volume(path, allow_4d=True)  # raises, naming the file
        shapes[key] = shape
    patients_3d = {(acdc_parts(k) or (k, 0))[0] for k, s in shapes.items() if len(s) == 3}
    out: list[_Frame] = []
    notes: list[str] = []
    for key, path in paths.items():
        shape = shapes[key]
        if len(shape) == 3:
            case = Case(key, path)
            case.patient, case.frame = acdc_parts(key) or (key, None)
            add_info(case)
            out.append(_Frame(case, path, None))
            continue
        base = key[: -len("_4d")] if key.endswith("_4d") else key
        if base in patients_3d:
            notes.append(f"{path.name}: left out (its patient has 3D frame files)")
            continue
        chosen = frames or tuple(range(1, shape[3] + 1))
        too_far = [f for f in chosen if f > shape[3]]
        if too_far:
            raise BadInputError(f"{path}: has {shape[3]} frames, --frames asks for {too_far[0]}")
        for f in chosen:
            case = Case(f"{base}_frame{f:02d}", path, patient=base, frame=f)
            add_info(case)
            out.append(_Frame(case, path, f - 1))
    return out, notes


def run(
    config: PredictConfig, inputs: Inputs, output: Path, *, force: bool = False, progress: Progress | None = None
) -> Result:
    """Segment raw NIfTI images and write masks, CSVs and ``predict.json`` into ``output`` (atomically).

    Args:
        config: frames, TTA, passes, gate agreement, output labels, device.
        inputs: the images, the checkpoints (and provenance).
        output: the folder to create.
        force: replace an existing folder.
        progress: one event per patient (unit ``patients``).

    Raises:
        InputMissingError, FileKindError, SchemaVersionError, BadInputError: unreadable inputs;
            checkpoints of mixed architectures or preprocessing, trained on ``--roi gt`` crops,
            or without a preprocessing record; 2D or 5D images; frames a cine does not have.
        OutputError: ``output`` exists without ``force``, or holds the images.
        ConfigError: ``cuda`` asked without a CUDA device.

    Example:
        >>> models = tuple(Path(f"runs/unet-f{k}/best.pt") for k in range(5))
        >>> run(PredictConfig(), Inputs(Path("scans"), models), Path("masks")).clinical  # doctest: +SKIP
    """
    images, out_dir = Path(inputs.images), Path(output)
    if out_dir.resolve() == images.resolve() or out_dir.resolve() in images.resolve().parents:
        raise OutputError(f"{out_dir}: holds the input images; write the masks to another folder")
    device = resolve_device(config.device)
    ensemble = SegEnsemble.load(inputs.models, device)
    propose, nvae_info, notes = _proposer(inputs.nvae, config, ensemble)
    frames, found_notes = find_frames(images, config.frames)
    notes += found_notes
    coding = _output_coding(config)
    by_patient: dict[str, list[_Frame]] = {}
    for fr in frames:
        by_patient.setdefault(fr.case.patient, []).append(fr)
    tracker = Tracker(progress, len(by_patient), "patients")
    result = Result(out_dir, notes=notes)
    records: list[dict[str, Any]] = []
    refine = config.refine_config()
    with atomic_dir(out_dir, force, inputs=[images, *inputs.models, *inputs.nvae]) as tmp:
        if propose is not None:
            (tmp / "uncorrected").mkdir()
        cache: dict[Path, Any] = {}
        for _patient, group in sorted(by_patient.items()):
            loaded = []
            for fr in group:
                vol = cache.get(fr.path) or read_volume(fr.path, allow_4d=fr.t is not None)
                cache = {fr.path: vol}  # keep one cine in memory while its frames are read
                data = vol.data if fr.t is None else vol.data[..., fr.t]
                loaded.append((fr, vol, np.asarray(data, dtype=np.float32)))
            seg = segment_patient([(d, v.spacing, fr.path) for fr, v, d in loaded], ensemble, config)
            for (fr, vol, _), labels, probs in zip(loaded, seg.labels, seg.probs, strict=True):
                rec = _frame_record(fr, seg)
                final = labels
                if propose is not None:
                    final, rec["corrected_slices"], rec["invalid_slices_crop"] = _correct(
                        labels, seg.crop_spacing, propose, refine, probs
                    )
                grid = (int(vol.shape[0]), int(vol.shape[1]))
                native = uncrop(final, seg.box.r0, seg.box.c0, seg.box.size, grid)
                name = f"{fr.case.key}.nii.gz"
                save_mask_like(coding[native], vol, tmp / name)
                result.files.append(out_dir / name)
                if propose is not None:
                    raw = uncrop(labels, seg.box.r0, seg.box.c0, seg.box.size, grid)
                    save_mask_like(coding[raw], vol, tmp / "uncorrected" / name)
                rec.update(_native_measures(native, vol.spacing))
                rec["mask"] = name
                records.append(rec)
            tracker.advance()
        lv = {r["case"]: r["lv_ml"] for r in records}
        assign_phases([fr.case for fr in frames], lv, extra_frames=True)
        phase = {fr.case.key: (fr.case.phase or "", fr.case.phase_from, fr.case.group) for fr in frames}
        for rec in records:
            rec["phase"], rec["phase_from"], rec["group"] = phase[rec["case"]]
        result.volumes = pd.DataFrame.from_records(records)
        result.clinical = clinical_table(result.volumes)
        result.volumes.to_csv(tmp / "volumes.csv", index=False, float_format="%.6g")
        result.clinical.to_csv(tmp / "clinical.csv", index=False, float_format="%.6g")
        meta = {
            "config": config_to_dict(config),
            "crop_rule": {"name": ensemble.rule.name, **ensemble.rule.as_dict()},
            "models": ensemble.describe(),
            "nvae": nvae_info,
            "labels": {str(k): int(v) for k, v in enumerate(coding)},
            "notes": result.notes,
            "provenance": make_provenance([images, *inputs.models, *inputs.nvae])
            if inputs.provenance is None
            else inputs.provenance,
        }
        (tmp / "predict.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return result


def _proposer(
    paths: tuple[Path, ...], config: PredictConfig, ensemble: SegEnsemble
) -> tuple[Proposer | None, list[dict[str, Any]], list[str]]:
    """The pooled NVAE candidates (None without NVAEs), their descriptions, and warnings."""
    if not paths:
        return None, [], []
    from acdctool.correct.nvae_proposer import NvaeProposer

    size = ensemble.rule.size
    proposers, info, notes = [], [], []
    for path in paths:
        proposer = NvaeProposer.load(Path(path), config.refine_config(), image_shape=(size, size), path_for_errors=path)
        proposers.append(proposer)
        info.append(proposer.info)
        trained = (proposer.info.get("trained_on") or {}).get("prep")
        mine = ensemble.rule.as_dict()
        keys = ("roi", "roi_mm", "margin", "size")
        if trained and any(trained.get(k) != mine[k] for k in keys):
            notes.append(
                f"{path}: NVAE trained on masks cropped with roi {trained.get('roi')}, the nets on roi "
                f"{mine['roi']}: shapes are seen at another scale (the anatomy gate still guards)"
            )
    return pooled(proposers), info, notes


def _correct(
    labels: np.ndarray, spacing: tuple[float, float], propose: Proposer, refine: RefineConfig, probs: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """Gate one frame's crop masks: (masks, slices corrected, slices invalid before), at crop resolution.

    ``probs`` (N, 4, H, W) is the ensemble's mean softmax, whose argmax ``labels`` are: the
    reference of ``refine.choose`` ``soft-dice`` and ``loglik``.
    """
    sp = np.tile(np.asarray(spacing, dtype=np.float64), (len(labels), 1))
    out = labels.copy()
    corrected = invalid = 0
    with_probs = refine.choose != Choose.MASK.value or bool(refine.softmax_families)
    # the frame's slices in stack order (base first, as in the NIfTI): thirds as refine's
    allowed = np.array([slice_position(i, len(labels)) in refine.fallback_positions for i in range(len(labels))])
    ends = stack_ends(np.arange(len(labels)), np.full(len(labels), len(labels)))
    for start in range(0, len(labels), refine.batch_size):
        rows = slice(start, start + refine.batch_size)
        g = gate(
            labels[rows],
            None,
            sp[rows],
            propose,
            refine,
            probs=probs[rows] if with_probs else None,
            fallback_rows=allowed[rows],
            stack_ends=ends[rows],
        )
        out[rows] = g.refined
        corrected += g.reasons.count("corrected")
        invalid += int((~g.valid_in).sum())
    return out, corrected, invalid


def _frame_record(fr: _Frame, seg: Any) -> dict[str, Any]:
    return {
        "case": fr.case.key,
        "patient": fr.case.patient,
        "frame": fr.case.frame if fr.case.frame is not None else 1,
        "image": str(fr.path.resolve()),
        "crop_r0": seg.box.r0,
        "crop_c0": seg.box.c0,
        "crop_size": seg.box.size,
        "passes": seg.passes,
        "heart_found": bool(seg.heart_found),
    }


def _native_measures(native: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, Any]:
    """Volumes (mL) and anatomical validity of one frame's masks (X, Y, Z) at native resolution."""
    slices = np.ascontiguousarray(native.transpose(2, 0, 1))
    ml = clinical.volumes_ml(slices, spacing[:2], spacing[2])
    _, valid = anatomy.evaluate_batch(slices, np.tile(np.asarray(spacing[:2]), (len(slices), 1)))
    return {
        "lv_ml": ml["lv"],
        "rv_ml": ml["rv"],
        "myo_ml": ml["myo"],
        "slices": len(slices),
        "invalid_slices": int((~valid).sum()),
    }


def clinical_table(volumes: pd.DataFrame) -> pd.DataFrame:
    """Per patient: ED/ES frames, LV/RV EDV, ESV (mL), EF (%), MYO mass at ED (g), validity.

    Patients without both an ED and an ES frame get volumes of what they have and NaN indices.
    """
    records = []
    for patient, part in volumes.groupby("patient", sort=True):
        ed = part[part.phase == PHASES[0]]
        es = part[part.phase == PHASES[1]]
        nan = float("nan")
        lv_edv = float(ed.lv_ml.iloc[0]) if len(ed) else nan
        lv_esv = float(es.lv_ml.iloc[0]) if len(es) else nan
        rv_edv = float(ed.rv_ml.iloc[0]) if len(ed) else nan
        rv_esv = float(es.rv_ml.iloc[0]) if len(es) else nan
        records.append(
            {
                "patient": patient,
                "group": part.group.iloc[0],
                "frames": len(part),
                "ed_frame": int(ed.frame.iloc[0]) if len(ed) else -1,
                "es_frame": int(es.frame.iloc[0]) if len(es) else -1,
                "phase_from": part.phase_from.iloc[0],
                "lv_edv": lv_edv,
                "lv_esv": lv_esv,
                "lv_ef": clinical.ejection_fraction(lv_edv, lv_esv) if len(es) and len(ed) else nan,
                "rv_edv": rv_edv,
                "rv_esv": rv_esv,
                "rv_ef": clinical.ejection_fraction(rv_edv, rv_esv) if len(es) and len(ed) else nan,
                "myo_mass": clinical.myocardial_mass(float(ed.myo_ml.iloc[0])) if len(ed) else nan,
                "slices": int(part.slices.sum()),
                "invalid_slices": int(part.invalid_slices.sum()),
                "valid_fraction": float(1 - part.invalid_slices.sum() / max(int(part.slices.sum()), 1)),
            }
        )
    return pd.DataFrame.from_records(records)


def _output_coding(config: PredictConfig) -> np.ndarray:
    """acdctool label → value written (a lookup table), from ``config.labels``."""
    mapping, _ = label_map_from(config.labels, []) if config.labels else (dict(IDENTITY), "")
    lut = np.zeros(4, dtype=np.uint8)
    for stored, label in mapping.items():
        if not 0 <= stored <= 255:
            raise BadInputError(f"--labels: value {stored} does not fit a uint8 mask")
        lut[label] = stored
    return lut
