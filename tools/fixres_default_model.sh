#!/usr/bin/env bash
# Third stage of the default Imagenette model (issue 23): a short fine-tune at the served
# preprocessing (FixRes, Touvron et al., NeurIPS 2019). Stages 1-2 trained on 160 px random
# crops; the model is served on the whole image at 192 px (bagnet.data.transforms). Here it
# trains on exactly what it is served (the whole image at 192 px, --crop-scale 1) plus
# horizontal flips, for 3 epochs at a small learning rate, with an EMA of the weights.
#
# No choice is made on val: 10% of train (--val-split 0.1, seed 2) is held out of this stage
# for the threshold calibration and the checks, and the shipped weights are the last EMA.
# (Stages 1-2 trained on those held-out images, so they are not a clean test set; val/ is.)
# Rerun to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE
DATA=${DATA:-../shared/data/imagenette}
BASE=${BASE:-src/bagnet/weights/bagnet33_w25-imagenette-86fd8540.pt}
OUT=runs/bagnet33_w25_fixres
resume=()
[ -f $OUT/last.pt ] && resume=(--resume)
exec .venv/bin/bagnet train --data "$DATA" --model bagnet33_w25 --weights "$BASE" --img-size 192 \
    --crop-scale 1 --val-split 0.1 --epochs 3 --batch-size 32 --workers 1 --lr 0.003 --warmup-epochs 0.25 \
    --weight-decay 2e-4 --label-smoothing 0.1 --ema --ema-decay 0.998 --amp bf16 --seed 2 \
    --no-progress --out $OUT "${resume[@]}"
