"""Networks: MONAI segmentation nets (:mod:`acdctool.models.seg`), later the NVAE."""
