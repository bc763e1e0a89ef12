#!/usr/bin/env bash
# The q-family at one recipe (issue 24): MODEL=bagnet9_w25 or bagnet17_w25 trained exactly as
# the default model bagnet33_w25 was (tools/train_default_model.sh, then
# tools/finetune_default_model.sh), so that the three differ only in their patch size.
#
#   stage 1: 32 epochs, 160 px random-resized crops (area 0.25-1), lr 0.05, 1 warmup epoch
#   stage 2: 14 epochs from stage 1's LAST weights, crops of area 0.35-1, lr 0.02, EMA 0.999
#
# No choice is made on val: the schedule is fixed and the shipped weights are stage 2's last
# EMA (val/ is evaluated every epoch for the accuracy curve only). Rerun to resume either
# stage. THREADS (default 2) sets the threads of this run; two runs at once use THREADS=1.
# AMP (default auto: bf16 where the CPU or GPU has bfloat16 units, else float32) may differ
# between sittings: a run resumed on another machine trains in the precision fast there.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:?set MODEL=bagnet9_w25 or bagnet17_w25}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE
DATA=${DATA:-../shared/data/imagenette}
S1=runs/$MODEL S2=runs/${MODEL}_ft
# A run folder lost with its machine resumes from the snapshot tools/snapshot_run.sh committed.
tools/restore_run.sh "$S1" "$S2"
common=(--data "$DATA" --model "$MODEL" --img-size 160 --batch-size 32 --workers 1 --weight-decay 2e-4
        --label-smoothing 0.1 --amp "${AMP:-auto}" --no-progress)
if ! { [ -f $S1/last.pt ] && .venv/bin/python -c "import sys, torch; sys.exit(torch.load('$S1/last.pt', weights_only=False)['epoch'] < 32)"; }; then
    resume=(); [ -f $S1/last.pt ] && resume=(--resume)
    .venv/bin/bagnet train "${common[@]}" --crop-scale 0.25 --epochs 32 --lr 0.05 --warmup-epochs 1 --seed 0 \
        --out $S1 "${resume[@]}"
fi
resume=(); [ -f $S2/last.pt ] && resume=(--resume)
exec .venv/bin/bagnet train "${common[@]}" --weights $S1/last.pt --crop-scale 0.35 --epochs 14 --lr 0.02 \
    --warmup-epochs 0.5 --ema --ema-decay 0.999 --seed 1 --out $S2 "${resume[@]}"
