#!/usr/bin/env bash
# Put a lost run folder back from its snapshot (tools/snapshot_run.sh): for each RUN given
# (runs/NAME) without a last.pt, copy benchmarks/training/NAME's last.pt (or join its parts
# and check their SHA-256) and log.jsonl, so that the training resumes where the snapshot was.
#   tools/restore_run.sh runs/resnet18 [runs/...]
set -euo pipefail
cd "$(dirname "$0")/.."
for run in "$@"; do
    snap=$(realpath -m "${TRAINING:-benchmarks/training}/$(basename "$run")")   # TRAINING: as in snapshot_run.sh
    [ -f "$run/last.pt" ] && continue
    if [ -f "$snap/last.pt" ]; then
        mkdir -p "$run" && cp "$snap/last.pt" "$run/last.pt"
    elif [ -f "$snap/last.pt.sha256" ]; then
        mkdir -p "$run" && cat "$snap"/last.pt.part-* > "$run/last.pt"
        if ! (cd "$run" && sha256sum --quiet -c "$snap/last.pt.sha256"); then
            rm -f "$run/last.pt"; echo "error: the parts in $snap do not join to the recorded last.pt" >&2; exit 1
        fi
    else
        continue
    fi
    cp "$snap/log.jsonl" "$run/" && echo "restored $run from $snap"
done
