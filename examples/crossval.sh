#!/usr/bin/env bash
# Cross-validated proof of refine: every training patient segmented and corrected out of fold.
#
# Usage: bash examples/crossval.sh ACDC_DIR WORK_DIR
#   ACDC_DIR   ACDC training folder (patient001..100); a root with testing/ adds test patients
#   WORK_DIR   where every file goes; rerun the same command to continue where it stopped
#
# Per fold k: train-seg --fold k, train-nvae on ground truth --fold k, and the 3-gram NVAE on
# ground-truth 3-grams --fold k. Then gen-seg with all fold nets (each patient by the one that
# never saw it, softmax kept), make-3gram of it, refine with all fold NVAEs (each patient by the
# one that never saw it) in four rows: NVAE gated (default), 3-gram NVAE gated, NVAE --gate none,
# morph; eval of each against the gen-seg baseline; a markdown table of all rows at the end
# (also written to WORK_DIR/crossval$TAG.md).
#
# Resumable, one heavy job at a time: a step whose output exists is skipped (outputs are written
# atomically, so one that exists is complete); trainings run with --resume (a finished one
# returns at once).
#
# Settings (environment), with their defaults:
#   ARCH=unet SEG_EPOCHS=100 SEG_ARGS=""       train-seg architecture, epochs, extra options
#   NVAE_EPOCHS=100 NVAE_ARGS=""               epochs and extra options of both NVAEs
#   NVAE3_ARGS="--beta 1,1,5"                  extra options of the 3-gram NVAE (report's β)
#   PREP_ARGS="" REFINE_ARGS="" EVAL_ARGS=""   extra options (REFINE_ARGS: the NVAE rows)
#   TAG=""                                     suffix of refine/eval outputs, to keep variants
#   FOLDS=5 DEVICE=auto PYTHON=python3
# Example, a second variant next to the first (trainings and gen-seg are reused):
#   TAG=-soft REFINE_ARGS="--choose soft-dice" bash examples/crossval.sh ACDC/training cv/
set -euo pipefail

acdc=${1:?usage: bash examples/crossval.sh ACDC_DIR WORK_DIR}
work=${2:?usage: bash examples/crossval.sh ACDC_DIR WORK_DIR}
arch=${ARCH:-unet}
folds=${FOLDS:-5}
seg_epochs=${SEG_EPOCHS:-100}
nvae_epochs=${NVAE_EPOCHS:-100}
device=${DEVICE:-auto}
tag=${TAG:-}
python=${PYTHON:-python3}
read -ra seg_args <<<"${SEG_ARGS:-}"
read -ra nvae_args <<<"${NVAE_ARGS:-}"
read -ra nvae3_args <<<"${NVAE3_ARGS:---beta 1,1,5}"
read -ra prep_args <<<"${PREP_ARGS:-}"
read -ra refine_args <<<"${REFINE_ARGS:-}"
read -ra eval_args <<<"${EVAL_ARGS:-}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$work/runs" "$work/refine" "$work/eval"
start=$SECONDS

say() { printf '== %s (%ds)\n' "$*" $((SECONDS - start)) >&2; }
# step OUTPUT COMMAND...: run COMMAND unless OUTPUT exists.
step() {
  local out=$1
  shift
  if [[ -e $out ]]; then
    say "skip $out (exists)"
  else
    say "$out"
    "$@" >/dev/null
  fi
}
# train RUN_DIR COMMAND...: a training, continued with --resume (returns at once when finished).
train() {
  local run=$1
  shift
  say "train $run"
  "$@" -o "$run" --resume --device "$device" >/dev/null
}

step "$work/slices.h5" acdctool prep "$acdc" -o "$work/slices.h5" --folds "$folds" "${prep_args[@]}"
step "$work/slices3.h5" acdctool make-3gram "$work/slices.h5" --source gt -o "$work/slices3.h5"

models=()
nvaes=()
nvaes3=()
for ((k = 0; k < folds; k++)); do
  train "$work/runs/$arch-f$k" acdctool train-seg "$work/slices.h5" --arch "$arch" --fold "$k" \
    --epochs "$seg_epochs" "${seg_args[@]}"
  train "$work/runs/nvae-f$k" acdctool train-nvae "$work/slices.h5" --input gt --fold "$k" \
    --epochs "$nvae_epochs" "${nvae_args[@]}"
  train "$work/runs/nvae3-f$k" acdctool train-nvae "$work/slices3.h5" --context 3gram --fold "$k" \
    --epochs "$nvae_epochs" "${nvae_args[@]}" "${nvae3_args[@]}"
  models+=(--model "$work/runs/$arch-f$k/best.pt")
  nvaes+=(--nvae "$work/runs/nvae-f$k/best.pt")
  nvaes3+=(--nvae "$work/runs/nvae3-f$k/best.pt")
done

seg=$work/seg.h5
seg3=$work/seg3.h5
step "$seg" acdctool gen-seg "$work/slices.h5" "${models[@]}" --save-probs --device "$device" -o "$seg"
step "$seg3" acdctool make-3gram "$seg" -o "$seg3"

r=$work/refine
step "$r/nvae$tag.h5" acdctool refine "$seg" "${nvaes[@]}" --device "$device" "${refine_args[@]}" \
  -o "$r/nvae$tag.h5"
step "$r/nvae3$tag.h5" acdctool refine "$seg3" --context 3gram "${nvaes3[@]}" --device "$device" \
  "${refine_args[@]}" -o "$r/nvae3$tag.h5"
step "$r/nvae-none$tag.h5" acdctool refine "$seg" "${nvaes[@]}" --gate none --device "$device" \
  "${refine_args[@]}" -o "$r/nvae-none$tag.h5"
step "$r/morph$tag.h5" acdctool refine "$seg" --method morph -o "$r/morph$tag.h5"

step "$work/eval/before" acdctool eval "$seg" -o "$work/eval/before" "${eval_args[@]}"
for name in nvae nvae3 nvae-none morph; do
  step "$work/eval/$name$tag" acdctool eval "$r/$name$tag.h5" --baseline "$seg" -o "$work/eval/$name$tag" \
    "${eval_args[@]}"
done

say "summary"
"$python" "$here/../scripts/crossval_table.py" "$work/eval" --tag "$tag" | tee "$work/crossval$tag.md"
