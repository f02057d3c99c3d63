"""Quality control without ground truth: which slices and patients a human should check.

- :mod:`.signals`: per-slice signals of a mask alone (anatomical validity and failed
  criteria, areas), of the segmentation's probabilities (entropy, margin, soft Dice) and of
  an NVAE (Dice between the mask and its posterior-mean reconstruction);
- :mod:`.volume`: signals of a slice within its volume (area continuity, position, structures
  missing in mid slices) and per patient (ED > ES volumes);
- :mod:`.nvae`: which NVAE checkpoint scores which patient (one that never saw it), batched;
- :mod:`.features`: the model's inputs, transformed from the signals, and each signal's
  direction (higher is worse or better) for scoring it alone;
- :mod:`.model`: the combination, a ridge regression on the features calibrated by isotonic
  regression (numpy only), fitted and scored out of fold;
- :mod:`.calibration`: the versioned ``qc-calibration`` JSON file that stores a fitted model;
- :mod:`.scoring`: AUC (Mann–Whitney), Spearman, MAE of predicted against true Dice.
"""
