"""acdctool: a command-line toolkit for cardiac MRI segmentation research on ACDC."""

# Kept importable from the package root for older code; the home of both is acdctool.conventions.
from acdctool.conventions import CLASS_NAMES, LABELS

__all__ = ["CLASS_NAMES", "LABELS", "__version__"]
__version__ = "0.1.0"
