#!/usr/bin/env bash
# One GPU check in one run (≤ 8 minutes on one H200): the gpu test lane, then timings.
#   bash bench/gpu.sh [OUT_DIR]      (prints a table; logs under OUT_DIR, default $OUT or gpu-bench/)
# Everything runs on synthetic phantoms (acdctool synth), so no data is needed on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-bench}}
mkdir -p "$out"
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device')"
python3 -c "import acdctool" 2>/dev/null || python3 -m pip install -q -e '.[test]'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
t0=$(date +%s)

# 1. the gpu lane: train-seg / train-nvae one epoch in bf16, gen-seg bf16 vs fp32, refine CUDA = CPU
python3 -m pytest -q -m gpu tests/gpu 2>&1 | tee "$out/pytest-gpu.log" | tail -3

# 2. timings on 128² phantoms prepped like ACDC (40 patients, ~760 slices)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
acdctool synth "$work/acdc" --patients 40 --seed 0 -q >/dev/null
acdctool prep "$work/acdc" -o "$work/slices.h5" -q >/dev/null
sec() { local s; s=$(date +%s.%N); "$@" >/dev/null; python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$s" "$(date +%s.%N)"; }
unet=$(sec acdctool train-seg "$work/slices.h5" --arch unet --fold 0 --epochs 5 --device cuda --amp -o "$work/unet" -q)
acdctool gen-seg "$work/slices.h5" -m "$work/unet/best.pt" --device cuda -o "$work/seg.h5" -q >/dev/null
nvae=$(sec acdctool train-nvae "$work/slices.h5" --input gt --fold 0 --epochs 3 --device cuda -o "$work/nvae" -q)
python3 bench/train_nvae.py --device cuda --models 4,12 --bf16 2>&1 | tee "$out/train_nvae.txt"
python3 bench/refine.py "$work/seg.h5" --nvae "$work/nvae/last.pt" --device cuda --batch-size 256 2>&1 | tee "$out/refine.txt"
per_epoch() { python3 -c "import pandas as pd, sys; t = pd.read_csv(sys.argv[1]).time_s; print(f'{t.iloc[1:].mean():.2f}')" "$1"; }
{
  echo "| figure | value |"
  echo "|---|---|"
  echo "| GPU | $(cat "$out/gpu.txt") |"
  echo "| gpu test lane | $(tail -1 "$out/pytest-gpu.log") |"
  echo "| UNet epoch, ~600 train slices, bf16 (s) | $(per_epoch "$work/unet/metrics.csv") (5 epochs, with compile/warm-up: ${unet} s) |"
  echo "| NVAE epoch, report configuration (s) | $(per_epoch "$work/nvae/metrics.csv") (3 epochs: ${nvae} s) |"
  echo "| whole script (s) | $(( $(date +%s) - t0 )) |"
} | tee "$out/table.md"
