"""Pipeline stages that turn slice files and checkpoints into new slice files (gen-seg, ...)."""
