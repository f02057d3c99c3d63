#!/usr/bin/env bash
# The built-in demo: synthetic phantoms through the pipeline, on CPU, in a few minutes.
# Usage: bash examples/demo.sh [OUT_DIR]     (default: demo/)
set -euo pipefail
out=${1:-demo}
mkdir -p "$out"

acdctool synth "$out/ACDC" --patients 20 --test-patients 5 --seed 0 --force
acdctool prep "$out/ACDC" -o "$out/slices.h5" --force
acdctool info "$out/slices.h5"
