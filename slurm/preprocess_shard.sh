#!/usr/bin/env bash
# One shard of slurm/preprocess.sh's array job: tokenize input i into part_<i>. Submitted by
# slurm/preprocess.sh, which sets the variables read here; not meant to be run on its own.
#
#SBATCH --job-name=mtds-preprocess
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=04:00:00
#SBATCH --output=logs/slurm/%x-%A_%a.out
set -euo pipefail
: "${SHARD_LIST:?submit this with slurm/preprocess.sh}" "${SLURM_ARRAY_TASK_ID:?not an array task}"

input=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$SHARD_LIST")
part="$PARTS_DIR/part_$(printf '%05d' "$SLURM_ARRAY_TASK_ID")"
export PYTHONPATH="$MTDS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
echo "=== $(date -Is) shard $SLURM_ARRAY_TASK_ID/$NUM_SHARDS: $input -> $part"
# shellcheck disable=SC2086  # JSON_KEYS and PREPROCESS_ARGS are lists
"$MTDS_PYTHON" -m data_tools.preprocess --input "$input" --output-prefix "$part" \
    --tokenizer-model "$TOKENIZER_MODEL" --json-keys $JSON_KEYS --workers "${SLURM_CPUS_PER_TASK:-1}" \
    --log-interval 60 $PREPROCESS_ARGS
echo "=== $(date -Is) shard $SLURM_ARRAY_TASK_ID done"
