#!/usr/bin/env bash
# The built-in demo: the whole pipeline on synthetic phantoms, on a CPU, in about 10 minutes.
#   synth → prep → train-seg (2 folds) → gen-seg (out-of-fold) → make-3gram → train-nvae
#   (one per fold) → refine (NVAE and morph) → eval (before/after tables and figures)
# Usage: bash examples/demo.sh [OUT_DIR]        (default: demo/; rerun overwrites it)
# Small settings for speed (64² slices, small nets, few epochs); override with SIZE,
# SEG_EPOCHS, NVAE_EPOCHS, PATIENTS. For real work use the defaults (see examples/pipeline.sh).
set -euo pipefail
out=${1:-demo}
size=${SIZE:-64}
seg_epochs=${SEG_EPOCHS:-20}
nvae_epochs=${NVAE_EPOCHS:-40}
patients=${PATIENTS:-20}
mkdir -p "$out/runs"
start=$SECONDS
# Every acdctool command prints its output path on stdout; here only the final report path
# goes to stdout, the intermediate ones join the logs on stderr.
exec 3>&1 1>&2
say() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - start)) >&2; }

say "synthetic ACDC phantoms"
acdctool synth "$out/ACDC" --patients "$patients" --seed 0 --force -q
say "prep"
acdctool prep "$out/ACDC/training" -o "$out/slices.h5" --size "$size" --folds 2 --force -q
acdctool info "$out/slices.h5" >&2

say "train-seg: a small UNet per fold"
for k in 0 1; do
  acdctool train-seg "$out/slices.h5" --arch unet --net-arg channels=16,32,64,128 --net-arg strides=2,2,2 \
    --fold "$k" --epochs "$seg_epochs" --batch-size 8 -o "$out/runs/unet-f$k" --force
done

say "gen-seg: each patient segmented by the fold model that never saw it"
acdctool gen-seg "$out/slices.h5" --model "$out/runs/unet-f0/best.pt" --model "$out/runs/unet-f1/best.pt" \
  --save-probs -o "$out/seg.h5" --force -q
acdctool make-3gram "$out/seg.h5" -o "$out/seg3.h5" --force -q

say "train-nvae on ground-truth masks, one per fold (small)"
for k in 0 1; do
  acdctool train-nvae "$out/slices.h5" --input gt --fold "$k" --groups-per-scale 2,1,1 --latent-channels 10 \
    --warmup-steps 100 --batch-size 16 --epochs "$nvae_epochs" --no-compile -o "$out/runs/nvae-f$k" --force
done

say "refine: NVAE (anatomy-gated, 4 samples, the smoothed softmax, the empty slice, then the minimal repair as fallback; each patient by the fold NVAE that never saw it) and morph"
acdctool refine "$out/seg.h5" --nvae "$out/runs/nvae-f0/best.pt" --nvae "$out/runs/nvae-f1/best.pt" --samples 4 \
  -o "$out/refined.h5" --force
acdctool refine "$out/seg.h5" --method morph -o "$out/morph.h5" --force

say "eval: NVAE-refined vs gen-seg"
acdctool eval "$out/refined.h5" --baseline "$out/seg.h5" -o "$out/report" --force
say "eval: morph vs gen-seg"
acdctool eval "$out/morph.h5" --baseline "$out/seg.h5" -o "$out/report-morph" --force --no-plots

say "done"
echo "report: $out/report/ (summary.json, slices.csv, volumes.csv, clinical.csv, comparison.csv, *.png)" >&2
echo "$out/report" >&3
