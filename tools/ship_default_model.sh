#!/usr/bin/env bash
# After tools/train_default_model.sh, tools/finetune_default_model.sh and
# tools/fixres_default_model.sh: the steps that turn the last stage into the shipped default
# model. Each step is skipped when its output exists, so rerunning resumes.
#   1. bagnet calibrate: the "probably none of these classes" threshold, chosen on the 947
#      train images the last stage held out (tools/heldout_folder.py reproduces its split) and
#      on half of caltech101-ood's categories, and measured on Imagenette val and the other
#      half of the categories: nothing is chosen on the images it is reported on;
#   2. the file copied into the package (tools/package_model.py), named by its hash; register
#      the printed name in src/bagnet/models/_weights.py;
#   3. bagnet eval of the shipped file on all of val, recorded in src/bagnet/weights/metrics.json
#      (tools/record_metrics.py), the one place its accuracy lives.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE
DATA=${DATA:-../shared/data/imagenette}
OOD=${OOD:-../shared/data/caltech101-ood}
RUN=${RUN:-runs/bagnet33_w25_fixres}
CALIBRATED=$RUN-imagenette.pt

[ -f "$RUN/model.pt" ] || { echo "no $RUN/model.pt: run tools/fixres_default_model.sh to the end first" >&2; exit 1; }
[ -d runs/caltech-split ] || .venv/bin/python tools/split_categories.py "$OOD" runs/caltech-split
[ -d "$RUN-held-out" ] || .venv/bin/python tools/heldout_folder.py "$DATA/train" "$RUN-held-out" --fraction 0.1 --seed 2
# The stage-3 run predates bagnet train's own record of its --val-split and of its training
# size, and its file still carried stage 2's calibration: write what this file is.
[ -f "$RUN/model-fixed.pt" ] || .venv/bin/python - "$RUN" "$DATA/train" <<'PY'
import sys, torch
from bagnet._io import atomic_save
from bagnet.data.folder import ImageFolder, split_indices
from bagnet.train.split import record_val_split
run, train = sys.argv[1:]
m = torch.load(f"{run}/model.pt", weights_only=True)
ds = ImageFolder(train)
record = record_val_split(train, ds.samples, split_indices(ds.targets, 0.1, seed=2)[1], 0.1, 2)
record["folder"] = train  # relative to the checkout; the digest of the image paths identifies it anywhere
meta = {k: v for k, v in m["meta"].items() if k not in ("source", "unknown")}
m["meta"] = {**meta, "val_split": record, "train_img_size": 192}
atomic_save(m, f"{run}/model-fixed.pt")
PY
[ -f "$CALIBRATED" ] || .venv/bin/bagnet calibrate --data "$RUN-held-out" --unknown runs/caltech-split/train \
    --test-data "$DATA/val" --test-unknown runs/caltech-split/held_out --weights "$RUN/model-fixed.pt" --cost 0.05 \
    --workers 1 --out "$CALIBRATED" --json "$RUN-calibrate.json"
if [ "${PACKAGE:-1}" = 1 ]; then
    .venv/bin/python tools/package_model.py "$CALIBRATED" --name bagnet33_w25-imagenette \
        --dataset "imagenette (224 px copy, 10 classes)"
    echo "register the file above in src/bagnet/models/_weights.py, then rerun with PACKAGE=0"
    exit 0
fi
[ -f "$RUN-shipped.eval.json" ] || .venv/bin/bagnet eval --data "$DATA" --weights imagenette --workers 1 \
    --json "$RUN-shipped.eval.json"
.venv/bin/python tools/record_metrics.py bagnet33_w25-imagenette --eval-json "$RUN-shipped.eval.json" \
    --selection "checkpoint: the last EMA of each stage's fixed schedule (stage 1: its best val epoch, 31 of 32); \
served size 192 px: chosen on val among 160/176/192/208 on 2026-12-06, then trained at in stage 3; \
'unknown' threshold: chosen on 947 train images held out of stage 3 and 51 Caltech-101 categories"
