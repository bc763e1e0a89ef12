#!/usr/bin/env bash
# Keep a running training's progress in git, since processes and runs/ do not always outlive
# a session: copies RUN's config.json, log.jsonl and last.pt to benchmarks/training/NAME/.
# A last.pt over 20 MB (a reference network with its optimizer and EMA state) is stored as
# parts of at most 19 MB (last.pt.part-aa, -ab, ...) with its SHA-256, so that every file stays
# small enough to commit. tools/restore_run.sh (called by the training scripts) puts a missing
# runs/NAME/last.pt back from there, so --resume continues where the snapshot was taken.
#   tools/snapshot_run.sh runs/bagnet17_w25 && git add benchmarks/training/bagnet17_w25 && git commit ...
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: tools/snapshot_run.sh runs/NAME}
NAME=$(basename "$RUN")
DEST=${TRAINING:-benchmarks/training}/$NAME   # TRAINING: another snapshot folder (the tests use one)
mkdir -p "$DEST"
if [ ! -f "$RUN/last.pt" ]; then
    cp "$RUN/config.json" "$RUN/log.jsonl" "$DEST/"
    echo "$DEST: config and log (epoch $(wc -l < "$RUN/log.jsonl")); no last.pt yet"; exit 0
fi
# Copy first: the training may rewrite last.pt while it is being split. The log is cut to
# the epochs that copy holds, so that a resumed run does not log an epoch twice (or skip one)
# when an epoch ended between the two copies.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp "$RUN/last.pt" "$tmp/last.pt"
cp "$RUN/config.json" "$DEST/"
epochs=$(${PYTHON:-.venv/bin/python} - "$tmp/last.pt" "$RUN/log.jsonl" "$DEST/log.jsonl" <<'PY'
import json, sys, torch
epoch = int(torch.load(sys.argv[1], map_location="cpu", weights_only=False)["epoch"])
rows = [line for line in open(sys.argv[2]) if line.strip() and json.loads(line)["epoch"] <= epoch]
open(sys.argv[3], "w").writelines(rows)
print(epoch)
PY
)
rm -f "$DEST/last.pt" "$DEST"/last.pt.part-* "$DEST/last.pt.sha256"
if [ "$(stat -c %s "$tmp/last.pt")" -le $((20 * 1024 * 1024)) ]; then
    cp "$tmp/last.pt" "$DEST/last.pt"
    echo "$DEST: config, log and last.pt (epoch $epochs)"
else
    split -b 19M "$tmp/last.pt" "$DEST/last.pt.part-"
    (cd "$tmp" && sha256sum last.pt) > "$DEST/last.pt.sha256"
    echo "$DEST: config, log and last.pt in $(ls "$DEST"/last.pt.part-* | wc -l) parts (epoch $epochs)"
fi
