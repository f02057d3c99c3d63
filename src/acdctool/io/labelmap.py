"""Label maps of other tools' masks: which stored value is RV, MYO or LV.

acdctool's labels are 0 background, 1 RV, 2 MYO, 3 LV (:mod:`acdctool.conventions`). Masks
from nnU-Net, MONAI or in-house nets may number the structures differently; their
``dataset.json`` (nnU-Net v1 ``{"1": "RV"}`` or v2 ``{"RV": 1}``) or a ``NAME=VALUE`` list
says how. Names are matched case-insensitively, ignoring ``_``/``-``/spaces, against the
synonyms in :data:`NAMES` (e.g. nnU-Net's ACDC dataset: ``RV``, ``MLV``, ``LVC``).

A label map is a dict ``stored value → acdctool label``; :data:`IDENTITY` is ACDC's own.

Example:
    >>> parse_label_spec("LV=1,MYO=2,RV=3")
    {0: 0, 1: 3, 2: 2, 3: 1}
    >>> label_of_name("Left ventricle"), label_of_name("MLV"), label_of_name("aorta")
    (3, 2, None)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from acdctool.conventions import LABELS
from acdctool.errors import BadInputError, ConfigError, InputMissingError

LabelMap = dict[int, int]
"""Stored value → acdctool label (0 background, 1 RV, 2 MYO, 3 LV)."""

IDENTITY: LabelMap = {k: k for k in LABELS}
"""ACDC's own coding (0 background, 1 RV, 2 MYO, 3 LV)."""

NAMES: dict[int, frozenset[str]] = {
    0: frozenset({"background", "bg", "bkg", "clear label", "none"}),
    1: frozenset(
        {"rv", "rvc", "right ventricle", "right ventricular cavity", "rv cavity", "rv blood pool", "rv bloodpool"}
    ),
    2: frozenset(
        {
            "myo",
            "mlv",
            "lvm",
            "myocardium",
            "lv myocardium",
            "myocardium lv",
            "left ventricular myocardium",
            "left ventricle myocardium",
            "lv myo",
        }
    ),
    3: frozenset(
        {"lv", "lvc", "left ventricle", "left ventricular cavity", "lv cavity", "lv blood pool", "lv bloodpool"}
    ),
}
"""Accepted names of each acdctool label (normalised: lower case, single spaces)."""


def _normalise(name: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower())).strip()


def label_of_name(name: str) -> int | None:
    """The acdctool label a structure name means, or None when it is not one we know."""
    key = _normalise(name)
    return next((label for label, names in NAMES.items() if key in names), None)


def _build(pairs: list[tuple[str, int]], source: str) -> LabelMap:
    """Map ``(name, stored value)`` pairs; every name must be known and RV, MYO, LV all present."""
    unknown = [name for name, _ in pairs if label_of_name(name) is None]
    if unknown:
        raise BadInputError(
            f"{source}: labels {', '.join(repr(n) for n in unknown)} do not map to RV/MYO/LV "
            "(known names: background; RV, right ventricle; MYO, MLV, myocardium; LV, LVC, left ventricle)"
        )
    mapping: LabelMap = {}
    seen: dict[int, str] = {}
    for name, value in pairs:
        label = label_of_name(name)
        assert label is not None
        if label in seen:
            raise BadInputError(f"{source}: labels {seen[label]!r} and {name!r} both mean {LABELS[label]}")
        if value in mapping:
            raise BadInputError(f"{source}: value {value} is given twice")
        seen[label] = name
        mapping[value] = label
    missing = [LABELS[k] for k in (1, 2, 3) if k not in seen]
    if missing:
        raise BadInputError(f"{source}: no label for {', '.join(missing)} (labels must map to RV, MYO and LV)")
    mapping.setdefault(0, 0)
    if mapping[0] != 0:
        raise BadInputError(f"{source}: value 0 must be the background")
    return dict(sorted(mapping.items()))


def read_dataset_json(path: Path | str) -> LabelMap:
    """The label map of an nnU-Net ``dataset.json`` (v1 ``"1": "RV"`` or v2 ``"RV": 1``).

    Raises:
        InputMissingError: no such file.
        BadInputError: not JSON, no ``labels``, region-based labels (lists), or labels that do not
            map to RV/MYO/LV (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"{path}: no such file")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(f"{path}: unreadable dataset.json ({type(exc).__name__}: {exc})") from None
    except (KeyError, TypeError):
        raise BadInputError(f"{path}: no 'labels' mapping in dataset.json") from None
    if not isinstance(labels, dict) or not labels:
        raise BadInputError(f"{path}: 'labels' must map names to values")
    pairs: list[tuple[str, int]] = []
    for key, value in labels.items():
        if isinstance(value, (list, dict)):
            raise BadInputError(f"{path}: region-based label {key!r} ({value}); give one value per structure")
        if isinstance(value, int) and not isinstance(value, bool):  # v2: name -> value
            pairs.append((str(key), value))
        elif isinstance(value, str) and str(key).lstrip("-").isdigit():  # v1: "value" -> name
            pairs.append((value, int(key)))
        else:
            raise BadInputError(f"{path}: cannot read label {key!r}: {value!r}")
    return _build(pairs, str(path))


def parse_label_spec(spec: str) -> LabelMap:
    """``"RV=1,MYO=2,LV=3"`` (names as in :data:`NAMES`) → a label map.

    Raises:
        ConfigError: malformed; names that do not map to RV/MYO/LV.
    """
    pairs: list[tuple[str, int]] = []
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ConfigError(f"--labels {spec!r}: expected NAME=VALUE pairs, e.g. RV=1,MYO=2,LV=3")
        pairs.append((name.strip(), int(value)))
    try:
        return _build(pairs, f"--labels {spec}")
    except BadInputError as exc:
        raise ConfigError(str(exc)) from None


def label_map_from(option: str | None, folders: list[Path]) -> tuple[LabelMap, str]:
    """The label map a command uses, and where it came from.

    ``option`` (``--labels``) is a ``dataset.json`` path or a ``NAME=VALUE`` list; without it a
    ``dataset.json`` in the first of ``folders`` that has one (nnU-Net writes it beside its
    predictions), else ACDC's coding.

    Raises:
        InputMissingError, BadInputError, ConfigError: see :func:`read_dataset_json` and
            :func:`parse_label_spec`.
    """
    if option:
        if "=" in option:
            return parse_label_spec(option), f"--labels {option}"
        return read_dataset_json(Path(option)), str(Path(option).resolve())
    for folder in folders:
        candidate = Path(folder) / "dataset.json"
        if candidate.is_file():
            return read_dataset_json(candidate), str(candidate.resolve())
    return dict(IDENTITY), "acdc (0 background, 1 RV, 2 MYO, 3 LV)"


def encode(mapping: LabelMap) -> str:
    """A label map as the JSON string stored in slice files (``{"1": 3, ...}``)."""
    return json.dumps({str(k): v for k, v in sorted(mapping.items())}, sort_keys=False)


def decode(text: str) -> LabelMap:
    """Inverse of :func:`encode` (an empty string is ACDC's coding)."""
    return {int(k): int(v) for k, v in json.loads(text).items()} if text else dict(IDENTITY)
