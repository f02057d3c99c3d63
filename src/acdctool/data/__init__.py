"""Data: synthetic phantoms, preprocessing, splits, torch datasets."""
