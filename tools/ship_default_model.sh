#!/usr/bin/env bash
# After tools/train_default_model.sh and tools/finetune_default_model.sh: the steps that turn its run into the shipped default
# model (issue 11). Each step is skipped when its output exists, so rerunning resumes.
#   1. outlier exposure: a short fine-tune that also pushes photos of other categories
#      (half of caltech101-ood's categories) towards a uniform prediction;
#   2. the input size it is served at (SERVE_SIZE, default 192; trained at 160): bagnet eval at
#      that size, then a copy of the file that says so (tools/package_model.py --img-size);
#      random-resized-crop training makes objects look larger than a same-size centre crop
#      shows them, so a larger test size scores better (FixRes, Touvron et al. 2019);
#   3. bagnet calibrate: the "probably none of these classes" threshold, fit and measured on
#      Imagenette val and on the other half of the categories, which training never saw (the
#      copy it writes keeps the weights and step 2's metrics, so it is not evaluated again);
#   4. the file copied into the package (tools/package_model.py), named by its hash.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE
DATA=${DATA:-../shared/data/imagenette}
OOD=${OOD:-../shared/data/caltech101-ood}
OE_EPOCHS=${OE_EPOCHS:-2}
SERVE_SIZE=${SERVE_SIZE:-192}
BASE=${BASE:-runs/bagnet33_w25_ft}  # the run whose model.pt is shipped
OE=${BASE}_oe
CALIBRATED=$BASE-imagenette.pt

[ -f "$BASE/model.pt" ] || { echo "no $BASE/model.pt: run tools/train_default_model.sh and tools/finetune_default_model.sh to the end first" >&2; exit 1; }
[ -d runs/caltech-split ] || .venv/bin/python tools/split_categories.py "$OOD" runs/caltech-split

# OE_EPOCHS=0 skips outlier exposure: the trained model is calibrated as it is, on all of
# caltech101-ood's categories (none of them was seen in training).
if [ "$OE_EPOCHS" = 0 ]; then
    MODEL=$BASE/model.pt
    UNKNOWN=$OOD
else
    MODEL=$OE/model.pt
    UNKNOWN=runs/caltech-split/held_out  # the categories the fine-tune never saw
    if [ ! -f "$MODEL" ]; then
        resume=()
        [ -f "$OE/last.pt" ] && resume=(--resume)
        .venv/bin/bagnet train --data "$DATA" --model bagnet33_w25 --weights "$BASE/model.pt" \
            --outliers runs/caltech-split/train --outlier-repeat 2 --img-size 160 --crop-scale 0.25 \
            --epochs "$OE_EPOCHS" --batch-size 32 --workers 1 --lr 0.005 --warmup-epochs 0 --weight-decay 2e-4 \
            --label-smoothing 0.1 --amp bf16 --seed 0 --no-progress --out "$OE" "${resume[@]}"
    fi
fi
SERVED=${MODEL%.pt}-$SERVE_SIZE.pt
[ -f "$SERVED.eval.json" ] || .venv/bin/bagnet eval --data "$DATA" --weights "$MODEL" --img-size "$SERVE_SIZE" \
    --workers 1 --json "$SERVED.eval.json"
[ -f "$SERVED" ] || .venv/bin/python tools/package_model.py "$MODEL" --img-size "$SERVE_SIZE" \
    --eval-json "$SERVED.eval.json" --out "$SERVED"
[ -f "$CALIBRATED" ] || .venv/bin/bagnet calibrate --data "$DATA/val" --unknown "$UNKNOWN" \
    --weights "$SERVED" --cost 0.05 --workers 1 --out "$CALIBRATED" --json "$BASE-calibrate.json"
.venv/bin/python tools/package_model.py "$CALIBRATED" --name bagnet33_w25-imagenette \
    --dataset "imagenette (224 px copy, 10 classes)"
