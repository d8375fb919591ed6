#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the main job end to end on Fashion-MNIST:
# train timm resnet18 with TRP, decompose it, evaluate and save it (loadable offline as
# resnet18_trp_ch_fmnist), then build ONNX Runtime engines for it and its dense
# counterpart and print the accuracy/latency report, then fp32 and int8 engines side by side
# (int8 calibrated on 512 Fashion-MNIST training images).
# Environment: EPOCHS (default 5), OUT (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
EPOCHS=${EPOCHS:-5}
OUT=${OUT:-runs/demo}
"$VENV/bin/python" recipes/fashion_mnist_resnet18.py --epochs "$EPOCHS" --output-dir "$OUT/train" --resume
# the saved model now loads by name, offline; show it in the zoo listing
"$VENV/bin/python" -m trp_zoo list
# engines for the factorized model and its dense counterpart, with accuracy and speed gates
"$VENV/bin/python" -m runtime.build_engine resnet18_trp_ch_fmnist --output "$OUT/engine" \
  --batch-sizes 1,32 --runs 30 --max-abs-diff 1e-3 --min-top1-agreement 0.99 --max-top1-drop 0.5
# int8 engines next to fp32 ones, timed in one interleaved run: one report row per precision
"$VENV/bin/python" -m runtime.build_engine resnet18_trp_ch_fmnist --output "$OUT/engine-int8" \
  --precision fp32,int8 --calibration-images 512 --batch-sizes 1,32 --runs 30 \
  --min-top1-agreement 0.98 --max-top1-drop 0.5
