#!/usr/bin/env bash
# GPU check: extraction throughput against a bare forward pass for a RAD-DINO-sized encoder
# (ViT-B/14 at 518 px, randomly initialised: no download), bf16 autocast, on a CUDA machine.
# Finishes in under 5 minutes on one modern GPU. Run from the repository root after
# `make test` (or any install of the package):   bash benchmarks/gpu_check.sh [PYTHON]
set -euo pipefail
PY=${1:-${PYTHON:-.venv/bin/python}}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for GPU machines"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PYEOF
WORKERS=$(( $(nproc) > 9 ? 8 : $(nproc) - 1 ))
# 1024 px phantoms (decode + resize cost like real radiographs), 512 images, batch 64.
timeout 280 "$PY" benchmarks/extraction.py --encoder rad-dino --weights none \
    --images 512 --size 1024 --batch-size 64 --workers "$WORKERS" --repeats 2
