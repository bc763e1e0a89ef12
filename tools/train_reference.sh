#!/usr/bin/env bash
# Reference networks for the paper's analyses (issue 24), trained from scratch on Imagenette at
# the BagNets' resolution (160 px random-resized crops, served on the whole image at 192 px).
#
#   MODEL=resnet18 tools/train_reference.sh      # 50 epochs
#   MODEL=regnet_x_800mf tools/train_reference.sh   # the second reference (benchmarks/README.md says why)
#
# One fixed recipe for every reference: SGD (momentum 0.9), batch 64, lr 0.1 after 2 warmup
# epochs, cosine to 0, weight decay 5e-4 on conv/linear weights, label smoothing 0.1,
# random-resized crops of 25-100% of the image and flips, bf16 autocast, an EMA of the
# weights (decay 0.999 per step) that is evaluated and shipped. No choice is made on val:
# the schedule is fixed and the shipped weights are the last EMA (val/ is evaluated every
# epoch for the accuracy curve only). Rerun to resume. THREADS (default 2) sets the threads.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:?set MODEL=resnet18 (or another torchvision classifier)}
EPOCHS=${EPOCHS:-50}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE
DATA=${DATA:-../shared/data/imagenette}
OUT=runs/$MODEL
tools/restore_run.sh "$OUT"   # a run folder lost with its machine resumes from its snapshot
resume=()
[ -f $OUT/last.pt ] && resume=(--resume)
exec .venv/bin/bagnet train --data "$DATA" --model "$MODEL" --img-size 160 --crop-scale 0.25 --epochs "$EPOCHS" \
    --batch-size 64 --workers 1 --lr 0.1 --warmup-epochs 2 --weight-decay 5e-4 --label-smoothing 0.1 \
    --ema --ema-decay 0.999 --amp "${AMP:-auto}" --seed 0 --no-progress --out $OUT "${resume[@]}"
