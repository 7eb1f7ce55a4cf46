#!/usr/bin/env bash
# Clean a corpus on SLURM CPU nodes (data_tools.clean with its dedup on disk): one array task per
# shard of the input files, then one merge.
#
#   INPUTS='data/raw/*.jsonl' OUTPUT=data/clean.jsonl bash slurm/clean.sh
#
# Run it with bash on the login node: it checks the rules and inputs, submits two jobs and returns.
#   1. slurm/clean_shard.sh as an array job: task i runs `python -m data_tools.clean ... --work-dir
#      WORK_DIR --shard i/N`: normalize, filters, decontamination and MinHash keys of the i-th run
#      of input files, left in WORK_DIR with a marker written last.
#   2. slurm/clean_merge.sh, started only when every array task succeeded (afterok): `--merge`,
#      the exact and near dedup across all shards (bounded memory, keys on disk), then OUTPUT and
#      OUTPUT.manifest.json. A failed shard cancels the merge (--kill-on-invalid-dep); run this
#      again and the shards that finished are skipped (their markers name the same rules and inputs).
#
# Logs go to logs/slurm/ under the directory you submit from.
set -euo pipefail

# ---- What to run (override any of these from the environment) ----------------------------
# INPUTS: input files, folders or quoted glob patterns (any data_tools.clean --input), space separated.
# OUTPUT: the cleaned corpus (.jsonl, .jsonl.gz or .jsonl.zst); its manifest is written beside it.
# WORK_DIR: the shards' candidates and keys (about the size of the kept text, plus 128 bytes a document).
# SHARDS: array tasks (default: one per input file; at most the number of input files).
# CLEAN_ARGS: more data_tools.clean flags, e.g. "--off quality --set min_words=20 --decontaminate eval.jsonl".
# CPUS_PER_TASK: worker processes per shard (and the CPUs each array task asks for).
# MEMORY_MB: what the merge's dedup may use for its sorts and buffers (its job asks for twice that).
# MAX_PARALLEL: at most this many shards run at once (array throttle, spares the filesystem).
# SBATCH_ARGS: more sbatch options for both jobs, e.g. "--partition=cpu --account=proj --time=4:00:00".
# KEEP_WORK: 1 keeps WORK_DIR after a successful merge.
# PYTHON: interpreter with mtds's dependencies (the active virtualenv's python).
INPUTS="${INPUTS:-data/raw/*.jsonl}"
OUTPUT="${OUTPUT:-data/clean.jsonl}"
WORK_DIR="${WORK_DIR:-${OUTPUT}.work}"
SHARDS="${SHARDS:-}"
CLEAN_ARGS="${CLEAN_ARGS:-}"
CPUS_PER_TASK="${CPUS_PER_TASK:-16}"
MEMORY_MB="${MEMORY_MB:-4096}"
MAX_PARALLEL="${MAX_PARALLEL:-64}"
SBATCH_ARGS="${SBATCH_ARGS:-}"
KEEP_WORK="${KEEP_WORK:-0}"
PYTHON="${PYTHON:-python}"

# ---- Nothing to edit below ---------------------------------------------------------------
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MTDS_ROOT="$(dirname "$here")"
export PYTHONPATH="$MTDS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUTPUT="$(realpath -m "$OUTPUT")"
WORK_DIR="$(realpath -m "$WORK_DIR")"

# The patterns go to python unexpanded (set -f): every task expands them the same way, sorted.
set -f
# shellcheck disable=SC2086  # INPUTS and CLEAN_ARGS are lists
files=$("$PYTHON" -m data_tools.clean --input $INPUTS --output "$OUTPUT" $CLEAN_ARGS --count-inputs)
set +f
SHARDS="${SHARDS:-$files}"
if (( SHARDS < 1 || SHARDS > files )); then
    echo "error: SHARDS=$SHARDS: between 1 and the $files input file(s) (a shard is a run of whole files)" >&2
    exit 2
fi
max_array=$(scontrol show config | sed -n 's/^MaxArraySize *= *\([0-9]*\).*/\1/p')
if [[ -n "$max_array" && $SHARDS -gt $((max_array - 1)) ]]; then
    echo "error: $SHARDS shards but the cluster allows arrays up to index $((max_array - 1)); set SHARDS lower" >&2
    exit 2
fi
mkdir -p "$WORK_DIR" logs/slurm

# The jobs read these from their environment (sbatch exports the submitting environment).
export MTDS_PYTHON="$PYTHON" MTDS_ROOT INPUTS OUTPUT WORK_DIR CLEAN_ARGS MEMORY_MB KEEP_WORK NUM_SHARDS="$SHARDS"

# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
array_id=$(sbatch --parsable $SBATCH_ARGS --cpus-per-task="$CPUS_PER_TASK" \
    --array="0-$((SHARDS - 1))%$MAX_PARALLEL" "$here/clean_shard.sh")
array_id="${array_id%%;*}"  # --parsable prints "id;cluster" on multi-cluster set-ups
# shellcheck disable=SC2086
merge_id=$(sbatch --parsable $SBATCH_ARGS --mem="$((2 * MEMORY_MB))M" --dependency="afterok:$array_id" \
    --kill-on-invalid-dep=yes "$here/clean_merge.sh")
merge_id="${merge_id%%;*}"
echo "submitted $SHARDS shard(s) of $files input file(s) as array job $array_id and the merge as job $merge_id"
echo "output: $OUTPUT (and $OUTPUT.manifest.json)"
echo "watch: squeue -j $array_id,$merge_id   logs: logs/slurm/"
