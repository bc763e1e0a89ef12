#!/usr/bin/env bash
# Keep a running training's progress in git, since processes and runs/ do not always outlive
# a session: copies RUN's config.json and log.jsonl, and its last.pt when it is small enough
# to commit (<= 20 MB), to benchmarks/training/NAME/. The training scripts restore a missing
# runs/NAME/last.pt from there, so --resume continues where the snapshot was taken.
#   tools/snapshot_run.sh runs/bagnet17_w25 && git add benchmarks/training/bagnet17_w25 && git commit ...
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: tools/snapshot_run.sh runs/NAME}
NAME=$(basename "$RUN")
DEST=benchmarks/training/$NAME
mkdir -p "$DEST"
cp "$RUN/config.json" "$RUN/log.jsonl" "$DEST/"
if [ -f "$RUN/last.pt" ] && [ "$(stat -c %s "$RUN/last.pt")" -le $((20 * 1024 * 1024)) ]; then
    cp "$RUN/last.pt" "$DEST/last.pt"
    echo "$DEST: config, log and last.pt (epoch $(wc -l < "$RUN/log.jsonl"))"
else
    echo "$DEST: config and log (epoch $(wc -l < "$RUN/log.jsonl")); last.pt is too large to commit"
fi
