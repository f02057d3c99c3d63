"""acdctool: a command-line toolkit for cardiac MRI segmentation research on ACDC."""

__version__ = "0.1.0"

LABELS = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
"""Label convention shared by every stage: uint8 masks with these values."""

CLASS_NAMES = {1: "rv", 2: "myo", 3: "lv"}
"""Short names of the foreground labels, used in table columns (``dice_rv``, ...)."""
