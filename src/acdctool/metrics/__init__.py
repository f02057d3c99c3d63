"""Segmentation metrics on numpy label maps (0 background, 1 RV, 2 MYO, 3 LV); no file I/O.

- :mod:`acdctool.metrics.overlap`: Dice, Hausdorff distance and HD95 (mm), with the ACDC
  conventions for empty masks, per slice, per volume and batched.
- :mod:`acdctool.metrics.anatomy`: the 16 anatomical criteria of Painchaud et al. (TMI 2020)
  for a short-axis slice, and slice validity; :mod:`acdctool.metrics.shapes`: the measures
  they are made of (holes, components, frontiers, concavity, circularity).
- :mod:`acdctool.metrics.clinical`: LV/RV volumes, ejection fraction, myocardial mass and the
  agreement statistics of the ACDC challenge.
"""
