"""The conventions every stage shares, in one place: import them, never spell them out again.

- **Labels**: masks are uint8 label maps, 0 background, 1 RV, 2 MYO, 3 LV (:data:`LABELS`);
  metrics, tables and logs name the foreground classes ``rv``, ``myo``, ``lv``
  (:data:`CLASS_NAMES`, :data:`CLASSES`), always in label order (:data:`FOREGROUND`).
- **Row keys**: a row of a slice file is identified by :data:`ROW_KEY`, a volume by
  :data:`VOLUME_KEY`; ground truth is matched to predictions by :data:`SLICE_KEY`.
- **Groups**: the ACDC pathology groups (:data:`GROUPS`).
- **Devices**: ``--device`` takes :class:`Device` values; :func:`resolve_device` turns one
  into a ``torch.device`` (torch is imported only there).
- **Exit codes**: :data:`EXIT_CODES`, defined in :mod:`acdctool.errors` with the errors that
  map to them.

This module imports neither torch nor numpy at import time, so the CLI can use it for
choices and help without slowing down ``--help`` or tab completion.

Example:
    >>> [CLASS_NAMES[label] for label in FOREGROUND]
    ['rv', 'myo', 'lv']
    >>> LABEL_OF["lv"], LABELS[LABEL_OF["lv"]]
    (3, 'LV')
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from acdctool.errors import EXIT_CODES, ConfigError, ExitCode, exit_codes_line

if TYPE_CHECKING:
    import torch

__all__ = [
    "BACKGROUND",
    "CLASSES",
    "CLASS_NAMES",
    "DEVICES",
    "Device",
    "EXIT_CODES",
    "ExitCode",
    "FOREGROUND",
    "GROUPS",
    "LABELS",
    "LABEL_OF",
    "N_CLASSES",
    "PHASES",
    "POSITIONS",
    "ROW_KEY",
    "SLICE_KEY",
    "VOLUME_KEY",
    "check_device",
    "exit_codes_line",
    "resolve_device",
    "slice_position",
]

# ------------------------------------------------------------------------------- labels
LABELS: dict[int, str] = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
"""Every label value of a mask and its display name."""
BACKGROUND = 0
FOREGROUND: tuple[int, ...] = (1, 2, 3)
"""Foreground labels, in the order every table and metric lists them: RV, MYO, LV."""
N_CLASSES = len(LABELS)
"""Channels of a one-hot mask / of a segmentation net's output (background included)."""
CLASS_NAMES: dict[int, str] = {1: "rv", 2: "myo", 3: "lv"}
"""Short names of the foreground labels, used in column and metric names (``dice_rv``, ``val_dice_lv``)."""
CLASSES: tuple[str, ...] = tuple(CLASS_NAMES[label] for label in FOREGROUND)
"""``("rv", "myo", "lv")``: the class names in label order."""
LABEL_OF: dict[str, int] = {name: label for label, name in CLASS_NAMES.items()}
"""Class name → label (``"lv"`` → 3)."""

# ----------------------------------------------------------------------------- row keys
ROW_KEY: tuple[str, ...] = ("patient", "phase", "slice", "model")
"""Index columns that identify a row of a slice file; stages match rows by these, never by position."""
SLICE_KEY: tuple[str, ...] = ("patient", "phase", "slice")
"""A slice whatever model segmented it: how predictions find their ground truth in another file."""
VOLUME_KEY: tuple[str, ...] = ("patient", "phase", "model")
"""Index columns that identify a 3D volume (its rows ordered by ``slice``)."""

# ------------------------------------------------------------------------------ dataset
GROUPS: tuple[str, ...] = ("NOR", "MINF", "DCM", "HCM", "RV")
"""ACDC pathology groups, in the order the phantoms cycle through them."""
PHASES: tuple[str, ...] = ("ED", "ES")
"""Cardiac phases kept by prep: end-diastole and end-systole."""
POSITIONS: tuple[str, ...] = ("base", "mid", "apex")
"""A slice's position in its stack, by thirds; ACDC stores the base first (slice 0)."""


def slice_position(slice_index: int, n_slices: int) -> str:
    """The :data:`POSITIONS` third of the stack that slice ``slice_index`` (0-based) lies in.

    Example:
        >>> [slice_position(i, 7) for i in range(7)]
        ['base', 'base', 'base', 'mid', 'mid', 'apex', 'apex']
    """
    third = (int(slice_index) * 3) // max(int(n_slices), 1)
    return POSITIONS[min(max(third, 0), 2)]


# ------------------------------------------------------------------------------ devices
class Device(str, Enum):
    """Values of every ``--device`` option."""

    AUTO = "auto"
    """CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU."""
    CPU = "cpu"
    CUDA = "cuda"
    """Fail (exit 2) when no CUDA device is available."""


DEVICES: tuple[str, ...] = tuple(d.value for d in Device)
"""``("auto", "cpu", "cuda")``."""


def check_device(request: str) -> None:
    """Refuse a device request that is not one of :data:`DEVICES` (no torch needed).

    Raises:
        ConfigError: unknown request.

    Example:
        >>> check_device("cpu")
        >>> check_device("tpu")
        Traceback (most recent call last):
        ...
        acdctool.errors.ConfigError: --device must be auto, cpu or cuda, got 'tpu'
    """
    if request not in DEVICES:
        raise ConfigError(f"--device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, got {request!r}")


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:local_rank`` when CUDA is available, else ``cpu``.

    Raises:
        ConfigError: unknown request, or ``cuda`` asked on a machine without a CUDA device.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    check_device(request)
    if request == Device.CPU.value:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if request == Device.CUDA.value:
        raise ConfigError(
            f"--device cuda: no CUDA device available (torch {torch.__version__}); use --device cpu or auto"
        )
    return torch.device("cpu")
