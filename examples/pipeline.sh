#!/usr/bin/env bash
# Every stage, from an ACDC folder to the final evaluation, on one machine (CPU or GPU).
#
# Usage: bash examples/pipeline.sh ACDC_DIR [WORK_DIR]
#   ACDC_DIR   ACDC root (training/ [testing/]) or a folder of patient folders
#   WORK_DIR   where files go (default: work/)
# Settings (environment): ARCHS="unet resunet attunet swinunetr" FOLDS=5 SEG_EPOCHS=100
#   NVAE_EPOCHS=100 DEVICE=auto. Rerunning resumes trainings and skips finished stages.
set -euo pipefail

acdc=${1:?usage: bash examples/pipeline.sh ACDC_DIR [WORK_DIR]}
work=${2:-work}
archs=${ARCHS:-"unet resunet attunet swinunetr"}
folds=${FOLDS:-5}
seg_epochs=${SEG_EPOCHS:-100}
nvae_epochs=${NVAE_EPOCHS:-100}
device=${DEVICE:-auto}
mkdir -p "$work/runs"

# Run a stage only when its output is missing (so a rerun continues where it stopped).
stage() { local out=$1; shift; [[ -e $out ]] || "$@"; }

stage "$work/slices.h5" acdctool prep "$acdc" -o "$work/slices.h5" --folds "$folds"

models=()
for arch in $archs; do
  for ((k = 0; k < folds; k++)); do
    run="$work/runs/$arch-f$k"
    acdctool train-seg "$work/slices.h5" --arch "$arch" --fold "$k" --epochs "$seg_epochs" \
      --device "$device" -o "$run" --resume -q
    models+=(--model "$run/best.pt")
  done
done

stage "$work/seg.h5" acdctool gen-seg "$work/slices.h5" "${models[@]}" -o "$work/seg.h5" --device "$device"
stage "$work/seg3.h5" acdctool make-3gram "$work/seg.h5" -o "$work/seg3.h5"

# The NVAEs, one per fold like the nets: refine gives each patient the one that never saw it.
nvaes=()
nvaes3=()
for ((k = 0; k < folds; k++)); do
  acdctool train-nvae "$work/slices.h5" --input gt --fold "$k" --epochs "$nvae_epochs" --device "$device" \
    -o "$work/runs/nvae-gt-f$k" --resume -q
  acdctool train-nvae "$work/seg3.h5" --context 3gram --beta 1,1,5 --fold "$k" --epochs "$nvae_epochs" \
    --device "$device" -o "$work/runs/nvae-3gram-f$k" --resume -q
  nvaes+=(--nvae "$work/runs/nvae-gt-f$k/best.pt")
  nvaes3+=(--nvae "$work/runs/nvae-3gram-f$k/best.pt")
done

stage "$work/refined.h5" acdctool refine "$work/seg.h5" "${nvaes[@]}" \
  --samples 8 --device "$device" -o "$work/refined.h5"
stage "$work/refined3.h5" acdctool refine "$work/seg3.h5" --context 3gram \
  "${nvaes3[@]}" --samples 8 --device "$device" -o "$work/refined3.h5"
stage "$work/morph.h5" acdctool refine "$work/seg.h5" --method morph -o "$work/morph.h5"

for name in refined refined3 morph; do
  acdctool eval "$work/$name.h5" --baseline "$work/seg.h5" -o "$work/report-$name" --force
done
acdctool eval "$work/seg.h5" -o "$work/report-seg" --force
echo "reports: $work/report-{seg,refined,refined3,morph}/"
