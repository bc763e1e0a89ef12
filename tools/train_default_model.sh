#!/usr/bin/env bash
# Stage 1 of the default Imagenette model (issue 11): BagNet-33 at a quarter width, 160 px.
# Rerun to resume (--resume continues from runs/bagnet33_w25/last.pt). THREADS=1 trains on one
# core and leaves the other free; the default uses both.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE
DATA=${DATA:-../shared/data/imagenette}
# This stage is finished (32 epochs). Its resume checkpoint was committed under
# benchmarks/training/bagnet33_w25/ while it ran across sessions; now that folder keeps its
# log and its best weights (epoch 31), which tools/finetune_default_model.sh starts from.
# Rerunning this script on a machine without runs/bagnet33_w25 trains the stage again.
resume=()
[ -f runs/bagnet33_w25/last.pt ] && resume=(--resume)
exec .venv/bin/bagnet train --data "$DATA" --model bagnet33_w25 --img-size 160 --crop-scale 0.25 \
    --epochs 32 --batch-size 32 --workers 1 --lr 0.05 --warmup-epochs 1 --weight-decay 2e-4 \
    --label-smoothing 0.1 --amp bf16 --seed 0 --no-progress --out runs/bagnet33_w25 "${resume[@]}"
