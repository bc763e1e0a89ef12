#!/usr/bin/env bash
# Turn a finished run into a research model that docs/RESULTS.md and docs/ROBUSTNESS.md use
# (issue 24, item 5): float16 weights under benchmarks/models/, served on the whole image at
# SIZE px (default 192, the default model's served size, fixed for every model of the
# q-family and the references rather than chosen per model), evaluated by `bagnet eval` on
# all of Imagenette val, and listed in docs/results/models.json.
#
#   tools/finish_research_model.sh bagnet17_w25 runs/bagnet17_w25_ft "q = 17 member of the q-family: ..."
#   tools/finish_research_model.sh resnet18 runs/resnet18 "reference: tools/train_reference.sh, 50 epochs"
#
# RUN/last.pt is packaged (its EMA weights where the run kept one: the last epoch, no choice
# on val); the accuracy recorded is that of the packaged float16 file at SIZE.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: tools/finish_research_model.sh NAME RUN NOTE}
RUN=${2:?usage: tools/finish_research_model.sh NAME RUN NOTE}
NOTE=${3:?usage: tools/finish_research_model.sh NAME RUN NOTE}
SIZE=${SIZE:-192}
RESULTS=${RESULTS:-docs/results}   # where models.json lives (a test points it elsewhere)
DATA=${DATA:-../shared/data/imagenette}
OUT=benchmarks/models/$NAME-imagenette.pt
[ -f "$RUN/last.pt" ] || { echo "error: $RUN/last.pt does not exist" >&2; exit 1; }
py=.venv/bin/python bagnet=.venv/bin/bagnet
$py tools/package_model.py "$RUN/last.pt" --half --img-size "$SIZE" --dataset "imagenette (224 px copy, 10 classes)" \
    --out "$OUT"
mkdir -p runs
$bagnet eval --data "$DATA" --weights "$OUT" --workers 1 --json "runs/$NAME.eval.json"
$py tools/record_results_model.py "$NAME" --path "$OUT" --eval-json "runs/$NAME.eval.json" --note "$NOTE" --results "$RESULTS"
echo "$OUT: $(du -h "$OUT" | cut -f1); listed in $RESULTS/models.json"
