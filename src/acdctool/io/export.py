"""Masks back onto the original ACDC grid (crop and resize undone), for the ``export`` stage.

Inverse of prep's geometry: prep maps original pixel rows ``[r0, r0+crop)`` onto ``size`` output
pixels keeping the field of view, so output pixel ``i`` is centred at original row
``r0 − ½ + (i + ½)·crop/size``. Export resamples each label's one-hot channel back onto the
``crop × crop`` grid with the same half-pixel convention (bilinear, then argmax) and pastes it
at ``(r0, c0)``, dropping what overhangs the image. The source image's header and affine are
kept (by :mod:`acdctool.stages.export`), so the masks open over the original image in ITK-SNAP or
3D Slicer.
"""

from __future__ import annotations

import numpy as np

from acdctool.conventions import N_CLASSES


def uncrop(labels: np.ndarray, r0: int, c0: int, crop: int, shape: tuple[int, int]) -> np.ndarray:
    """(Z, size, size) labels → (rows, cols, Z) uint8 on the original grid (the NIfTI layout)."""
    import torch
    import torch.nn.functional as F

    from acdctool.data.loader import argmax_labels

    z = labels.shape[0]
    onehot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), N_CLASSES).permute(0, 3, 1, 2).float()
    scores = F.interpolate(onehot, size=(crop, crop), mode="bilinear", align_corners=False)
    big = argmax_labels(scores).numpy()
    out = np.zeros((shape[0], shape[1], z), dtype=np.uint8)
    r_lo, r_hi = max(r0, 0), min(r0 + crop, shape[0])
    c_lo, c_hi = max(c0, 0), min(c0 + crop, shape[1])
    if r_lo < r_hi and c_lo < c_hi:
        out[r_lo:r_hi, c_lo:c_hi] = big[:, r_lo - r0 : r_hi - r0, c_lo - c0 : c_hi - c0].transpose(1, 2, 0)
    return out
