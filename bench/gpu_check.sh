#!/usr/bin/env bash
# GPU readiness check: one GPU, under 8 minutes, offline, with only what scripts/setup.sh installs.
#   bench/gpu_check.sh                  # writes bench/gpu_check.json; copy the figures into bench/RESULTS.md
# 1. the GPU tests (tests/gpu: packed == per-sequence with flash-attn if installed and with torch's varlen attention,
#    bf16 DeepSpeed training that lowers the loss);
# 2. bench/gpu_check.py: the packed attention chosen, packed == per-sequence logits, and tokens/s + MFU of a bf16
#    packed training step on a ~1.1B-parameter model (random init), against sdpa_varlen on the same rows.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device (run bench/gpu_check.py --smoke on CPU)')"
timeout 300 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider
timeout 180 "$PY" bench/gpu_check.py --json bench/gpu_check.json "$@"
