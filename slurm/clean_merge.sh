#!/usr/bin/env bash
# The last step of slurm/clean.sh: data_tools.clean --merge, the exact and near dedup across every
# shard and the output with its manifest; then WORK_DIR is removed (unless KEEP_WORK=1). Submitted
# by slurm/clean.sh with --dependency=afterok on the array job; not meant to be run on its own.
#
#SBATCH --job-name=mtds-clean-merge
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=logs/slurm/%x-%j.out
set -euo pipefail
: "${WORK_DIR:?submit this with slurm/clean.sh}"

export PYTHONPATH="$MTDS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
echo "=== $(date -Is) merging $NUM_SHARDS shard(s) of $WORK_DIR into $OUTPUT"
set -f
# shellcheck disable=SC2086  # INPUTS and CLEAN_ARGS are lists
"$MTDS_PYTHON" -m data_tools.clean --input $INPUTS --output "$OUTPUT" --work-dir "$WORK_DIR" \
    --shards "$NUM_SHARDS" --merge --memory-mb "$MEMORY_MB" --log-interval 60 $CLEAN_ARGS
if [[ "$KEEP_WORK" != 1 ]]; then rm -rf "$WORK_DIR"; fi
echo "=== $(date -Is) done: $OUTPUT"
