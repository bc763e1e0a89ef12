#!/usr/bin/env bash
# Second stage of the default Imagenette model (issue 11). The first stage
# (tools/train_default_model.sh, 32 epochs) ended at 82.6% val top-1 while underfitting:
# training top-1 under augmentation equalled val. This stage restarts a 14-epoch cosine from
# its best weights with larger crops (--crop-scale 0.35, closer to the centre crop seen at
# test) and an EMA of the weights (decay 0.999 per step, a horizon of ~3.4 epochs), which
# is evaluated and shipped. Rerun to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE
DATA=${DATA:-../shared/data/imagenette}
BASE=${BASE:-runs/bagnet33_w25/model.pt}
# The first stage's best weights (epoch 31) are committed, as processes and run folders do
# not always outlive a session; its resume checkpoint is no longer needed.
ARCHIVE=benchmarks/training/bagnet33_w25/model.pt
if [ ! -f "$BASE" ] && [ "$BASE" = runs/bagnet33_w25/model.pt ]; then
    mkdir -p runs/bagnet33_w25 && cp "$ARCHIVE" "$BASE"
    echo "restored $BASE from $ARCHIVE"
fi
OUT=runs/bagnet33_w25_ft
resume=()
[ -f $OUT/last.pt ] && resume=(--resume)
exec .venv/bin/bagnet train --data "$DATA" --model bagnet33_w25 --weights "$BASE" --img-size 160 \
    --crop-scale 0.35 --epochs 14 --batch-size 32 --workers 1 --lr 0.02 --warmup-epochs 0.5 \
    --weight-decay 2e-4 --label-smoothing 0.1 --ema --ema-decay 0.999 --amp bf16 --seed 1 \
    --no-progress --out $OUT "${resume[@]}"
