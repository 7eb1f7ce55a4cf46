#!/usr/bin/env bash
# The last step of slurm/preprocess.sh: merge every shard's dataset, in shard order, into one
# per JSON key, verify it, and remove the parts. Submitted by slurm/preprocess.sh with
# --dependency=afterok on the array job; not meant to be run on its own.
#
#SBATCH --job-name=mtds-merge
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=logs/slurm/%x-%j.out
set -euo pipefail
: "${PARTS_DIR:?submit this with slurm/preprocess.sh}"

export PYTHONPATH="$MTDS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
for key in $JSON_KEYS; do
    parts=()
    for ((i = 0; i < NUM_SHARDS; i++)); do
        parts+=("$PARTS_DIR/part_$(printf '%05d' "$i")_${key}_document")
    done
    out="${OUTPUT_PREFIX}_${key}_document"
    echo "=== $(date -Is) merging ${#parts[@]} part(s) into $out"
    "$MTDS_PYTHON" -m data_tools.merge --input "${parts[@]}" --output-prefix "$out"
    "$MTDS_PYTHON" -m data_tools.inspect_data --verify "$out"
done
if [[ "$KEEP_PARTS" != 1 ]]; then rm -rf "$PARTS_DIR"; fi
echo "=== $(date -Is) done: train with --data.paths=${OUTPUT_PREFIX}_<key>_document"
