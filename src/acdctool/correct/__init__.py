"""Correction of segmentations, shared by ``refine`` and ``predict``: the anatomy gate and its
candidate bookkeeping (:mod:`.gate`), the ranking rules (:mod:`.scores`), per-structure edits
(:mod:`.structure`), the NVAE candidates (:mod:`.nvae_proposer`), the training patients an NVAE
checkpoint records (:mod:`.patients`) and the morphological baseline (:mod:`.morph`).

Library code: it never imports :mod:`acdctool.stages`."""
