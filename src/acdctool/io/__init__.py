"""File formats: ACDC folders, the HDF5 slice dataset, checkpoints, exports."""
