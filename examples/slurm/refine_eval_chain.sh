#!/usr/bin/env bash
# A dependent chain: gen-seg → make-3gram → refine → eval, each job starting only after the
# previous one succeeded (--dependency=afterok). Submits with sbatch when SLURM is present;
# otherwise runs the same steps in order here.
#   bash examples/slurm/refine_eval_chain.sh WORK_DIR NVAE_CKPT[,NVAE_CKPT...] SEG_CKPT [SEG_CKPT...]
# NVAE_CKPT: comma-separated, one per fold (refine refuses an NVAE that trained on a patient).
set -euo pipefail

work=${1:?usage: refine_eval_chain.sh WORK_DIR NVAE_CKPT[,...] SEG_CKPT...}
IFS=, read -ra nvae_list <<<"${2:?usage: refine_eval_chain.sh WORK_DIR NVAE_CKPT[,...] SEG_CKPT...}"
shift 2
models=()
for ckpt in "$@"; do models+=(--model "$ckpt"); done
nvaes=()
for ckpt in "${nvae_list[@]}"; do nvaes+=(--nvae "$ckpt"); done
((${#models[@]})) || { echo "give at least one segmentation checkpoint" >&2; exit 2; }

steps=(
  "acdctool gen-seg $work/slices.h5 ${models[*]} -o $work/seg.h5 --force"
  "acdctool make-3gram $work/seg.h5 -o $work/seg3.h5 --force"
  "acdctool refine $work/seg.h5 ${nvaes[*]} --samples 8 -o $work/refined.h5 --force"
  "acdctool eval $work/refined.h5 --baseline $work/seg.h5 -o $work/report --force"
)

if command -v sbatch >/dev/null; then
  dep=()
  for step in "${steps[@]}"; do
    id=$(sbatch --parsable "${dep[@]}" --gres=gpu:1 --time=01:00:00 --job-name=acdc-chain --wrap="$step")
    echo "submitted $id: $step"
    dep=(--dependency="afterok:$id")
  done
else
  for step in "${steps[@]}"; do echo "+ $step" >&2; $step; done
fi
