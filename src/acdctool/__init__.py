"""acdctool: a command-line toolkit for cardiac MRI segmentation research on ACDC.

Shared conventions (labels, class names, keys, groups, devices, exit codes) live in
:mod:`acdctool.conventions`.
"""

__version__ = "0.1.0"
