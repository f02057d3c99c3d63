"""ED/ES phases of frames whose files do not say which they are.

Order of evidence, per patient: ``Info.cfg`` beside the files (ACDC layout) or a manifest's
``phase`` column; otherwise the **LV volume**: the frame where the left ventricle is largest is
end-diastole (ED), the one where it is smallest end-systole (ES). A patient with a single frame
gets ED (its largest). Volumes come from the ground truth when there is one, else from the
prediction. Frames beyond ED and ES get the phase ``""`` (``predict`` reports them; files that
need a phase per volume refuse them).

Example:
    >>> from acdctool.io.layouts import Case
    >>> cases = [Case("patient001_frame01", None, patient="patient001", frame=1),
    ...          Case("patient001_frame12", None, patient="patient001", frame=12)]
    >>> assign_phases(cases, {"patient001_frame01": 80.0, "patient001_frame12": 150.0})
    >>> [(c.frame, c.phase, c.phase_from) for c in cases]
    [(1, 'ES', 'lv-volume'), (12, 'ED', 'lv-volume')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from acdctool.conventions import PHASES
from acdctool.errors import BadInputError
from acdctool.io.layouts import Case

LV_RULE = "lv-volume"


def assign_phases(cases: Sequence[Case], lv_ml: Mapping[str, float], *, extra_frames: bool = False) -> None:
    """Set ``phase`` (and ``phase_from``) of every case that has none, in place.

    Args:
        cases: the cases, any patients.
        lv_ml: case key → LV volume (mL) for the cases without a phase.
        extra_frames: allow more than two frames per patient (the others get ``""``);
            otherwise that is an error.

    Raises:
        BadInputError: a patient has two frames with the same known phase, or more than two
            frames without ``extra_frames`` (naming a file and what to do).
    """
    by_patient: dict[str, list[Case]] = {}
    for case in cases:
        by_patient.setdefault(case.patient, []).append(case)
    for patient, group in by_patient.items():
        where = next((c.image or c.gt or next(iter(c.preds.values()), None) for c in group), None)
        if len(group) > 2 and not extra_frames:
            raise BadInputError(
                f"{where}: patient {patient} has {len(group)} frames; one ED and one ES are kept per patient "
                "(give case/patient/phase columns in a --manifest)"
            )
        known = [c for c in group if c.phase]
        phases = [c.phase or "" for c in known]
        dup = sorted({p for p in phases if phases.count(p) > 1})
        if dup:
            raise BadInputError(f"{where}: patient {patient} has several {dup[0]} frames")
        if len(known) == len(group):
            continue
        if known and len(group) == 2:  # one of two named: the other is the other phase
            other = next(c for c in group if not c.phase)
            other.phase = PHASES[1] if known[0].phase == PHASES[0] else PHASES[0]
            other.phase_from = known[0].phase_from
            continue
        if known:  # ED/ES named for some frames only: the others are neither
            for c in group:
                if not c.phase:
                    c.phase, c.phase_from = "", "other"
            continue
        order = sorted(group, key=lambda c: (-lv_ml[c.key], c.frame if c.frame is not None else 0, c.key))
        for rank, c in enumerate(order):
            c.phase = PHASES[0] if rank == 0 else (PHASES[1] if rank == len(order) - 1 else "")
            c.phase_from = LV_RULE


def assign_by_frame_order(cases: Sequence[Case]) -> None:
    """Without masks: per patient, the lower frame number is ED, the higher ES (ACDC's usual
    order; a guess, recorded as ``phase_from="frame-order"``).

    Raises:
        BadInputError: a patient with more than two frames.
    """
    by_patient: dict[str, list[Case]] = {}
    for case in cases:
        by_patient.setdefault(case.patient, []).append(case)
    for patient, group in by_patient.items():
        if all(c.phase for c in group):
            continue
        if len(group) > 2:
            raise BadInputError(f"{group[0].image}: patient {patient} has {len(group)} frames; prep keeps ED and ES")
        order = sorted(group, key=lambda c: (c.frame if c.frame is not None else 0, c.key))
        for rank, c in enumerate(order):
            c.phase, c.phase_from = PHASES[0] if rank == 0 else PHASES[1], "frame-order"
