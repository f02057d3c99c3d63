"""Correction of segmentations, shared by ``refine`` and ``predict``: the anatomy gate
(:mod:`.gate`), the NVAE candidates (:mod:`.nvae_proposer`) and the morphological baseline
(:mod:`.morph`)."""
