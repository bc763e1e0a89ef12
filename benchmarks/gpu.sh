#!/usr/bin/env bash
# The GPU check of issue 24 in one call: trains a reference network for a few epochs,
# evaluates it, times inference (BagNet-33 vs ResNet-50) and full-resolution maps, and
# certifies the shipped default model; every result as JSON in benchmarks/results/gpu/.
#
# On a lent GPU machine (its python3 holds torch; the data travels as gpu-data/, made here
# first by `python benchmarks/gpu_data.py ../shared/data/imagenette gpu-data`):
#     run(command="bash benchmarks/gpu.sh", carry=["gpu-data"])
# Dry run on this CPU (what tests/test_gpu_script.py does):
#     bash benchmarks/gpu.sh --device cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda TINY=() DATA=${DATA:-gpu-data} OUT=${OUT:-${OUT_DIR:-benchmarks/results/gpu}}
EPOCHS=${EPOCHS:-5} WORKERS=${WORKERS:-8}
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=(--tiny); shift ;;
        --data) DATA=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --epochs) EPOCHS=$2; shift 2 ;;
        *) echo "gpu.sh: unknown option $1 (--device, --tiny, --data, --out, --epochs)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ ${#TINY[@]} -gt 0 ]; then
    [ -d "$DATA" ] || "$PY" benchmarks/gpu_data.py - "$DATA" --tiny
    exec "$PY" benchmarks/gpu_run.py --device "$DEVICE" --data "$DATA" --out "$OUT" --runs "$OUT/runs" \
        --epochs 1 --img-size 32 --batch-size 8 --workers 0 --tiny
fi
[ -d "$DATA" ] || { echo "gpu.sh: no $DATA: make it with benchmarks/gpu_data.py and carry it" >&2; exit 1; }
exec "$PY" benchmarks/gpu_run.py --device "$DEVICE" --data "$DATA" --out "$OUT" --runs runs/gpu \
    --epochs "$EPOCHS" --workers "$WORKERS"
