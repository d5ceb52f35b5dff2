#!/usr/bin/env bash
# GPU check on a CUDA machine, each step with its time and its own limit:
#   1. a phantom cohort (512 images of 1024 px), made in parallel before anything is timed;
#   2. extraction throughput against a bare forward pass for a RAD-DINO-sized encoder (ViT-B/14
#      at 518 px, randomly initialised: no download), bf16 autocast;
#   3. probes on CUDA: the linear probe's torch backend, the segmentation probe on grid16 and on
#      grid16+grid32 (benchmarks/gpu_probes.py);
#   4. a two-epoch fine-tune of the same encoder on the cohort (one round).
# About 4 minutes on a 16-core host with one current GPU (a budget, not a measurement: no GPU
# has run it yet). Run from the repository root after `make test` (or any install of the
# package):   bash benchmarks/gpu_check.sh [PYTHON]
# The GPU test module is separate:   EMBEDCACHE_TEST_GPU=1 pytest -q tests/test_gpu.py
set -euo pipefail
PY=${1:-${PYTHON:-.venv/bin/python}}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for GPU machines"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PYEOF
WORK=$(mktemp -d -t embedcache-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
CORES=$(nproc)

step() { echo; echo "== $1"; }
elapsed() { echo "   ($1: $(( $(date +%s) - $2 )) s)"; }

step "phantom cohort: 512 images of 1024 px on $CORES processes (not timed by the benchmarks)"
t0=$(date +%s)
# (-c, not a here-document: the worker processes are spawned and re-import the main module)
"$PY" -c 'import sys
from embedcache.phantoms import CohortSpec, make_cohort
spec = CohortSpec(n_patients=512, images_per_patient=(1, 1), size=1024)
print(make_cohort(sys.argv[1], spec, workers=int(sys.argv[2])))' "$WORK/cohort" "$CORES"
elapsed "cohort" "$t0"
MANIFEST="$WORK/cohort/manifest.csv"

step "extraction vs bare forward (rad-dino, bf16, batch 64, default decode workers)"
t0=$(date +%s)
timeout 240 "$PY" benchmarks/extraction.py --encoder rad-dino --weights none \
    --manifest "$MANIFEST" --batch-size 64 --repeats 2
elapsed "extraction benchmark" "$t0"

step "probes on CUDA"
t0=$(date +%s)
timeout 180 "$PY" benchmarks/gpu_probes.py
elapsed "probes" "$t0"

step "two-epoch fine-tune (rad-dino, random init, pneumothorax, round 0, batch 16, bf16)"
t0=$(date +%s)
timeout 240 "$PY" -m probes.cli.finetune finetune "$MANIFEST" --encoder rad-dino \
    --weights none --label pneumothorax --epochs 2 --rounds 0 --batch-size 16 \
    --encoder-lr 1e-5 --head-lr 1e-3 --n-boot 20 --quiet --out "$WORK/finetune"
elapsed "fine-tune" "$t0"
"$PY" - "$WORK/finetune" <<'PYEOF'
import json, sys
from pathlib import Path
run = json.loads((Path(sys.argv[1]) / "run.json").read_text())
print("epochs run:", run.get("epochs_run"), " best epoch:", run.get("best_epoch"))
PYEOF
