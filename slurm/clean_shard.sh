#!/usr/bin/env bash
# One shard of slurm/clean.sh's array job: data_tools.clean --shard i/N. A shard whose marker in
# WORK_DIR names the same rules and inputs is skipped. Submitted by slurm/clean.sh, which sets the
# variables read here; not meant to be run on its own.
#
#SBATCH --job-name=mtds-clean
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=04:00:00
#SBATCH --output=logs/slurm/%x-%A_%a.out
set -euo pipefail
: "${WORK_DIR:?submit this with slurm/clean.sh}" "${SLURM_ARRAY_TASK_ID:?not an array task}"

export PYTHONPATH="$MTDS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
echo "=== $(date -Is) shard $SLURM_ARRAY_TASK_ID/$NUM_SHARDS -> $WORK_DIR"
set -f  # INPUTS' patterns go to python unexpanded, as in every other task
# shellcheck disable=SC2086  # INPUTS and CLEAN_ARGS are lists
"$MTDS_PYTHON" -m data_tools.clean --input $INPUTS --output "$OUTPUT" --work-dir "$WORK_DIR" \
    --shard "$SLURM_ARRAY_TASK_ID/$NUM_SHARDS" --workers "${SLURM_CPUS_PER_TASK:-1}" --log-interval 60 $CLEAN_ARGS
echo "=== $(date -Is) shard $SLURM_ARRAY_TASK_ID done"
