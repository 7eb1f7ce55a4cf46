#!/usr/bin/env bash
# Tokenize a sharded corpus on SLURM CPU nodes: one array task per shard, then one merge.
#
#   INPUTS='data/raw/shard_*.jsonl' TOKENIZER_MODEL=data/tok.model OUTPUT_PREFIX=data/web \
#       bash slurm/preprocess.sh
#
# Run it with bash on the login node: it submits two jobs and returns.
#   1. slurm/preprocess_shard.sh as an array job; task i tokenizes the i-th input file (in
#      sorted order) into ${OUTPUT_PREFIX}_parts/part_<i>_<key>_document.bin/.idx.
#   2. slurm/preprocess_merge.sh, started only when every array task succeeded (afterok),
#      merges the parts in shard order into ${OUTPUT_PREFIX}_<key>_document.bin/.idx, the
#      prefix to give training as --data.paths. A failed shard cancels the merge instead of
#      leaving it pending forever (--kill-on-invalid-dep); fix it and run this again.
#
# Logs go to logs/slurm/ under the directory you submit from.
set -euo pipefail

# ---- What to run (override any of these from the environment) ----------------------------
# INPUTS: input files or glob patterns (.jsonl, .jsonl.gz, .jsonl.zst), space separated.
# TOKENIZER_MODEL: sentencepiece model from `python -m data_tools.train_tokenizer`.
# OUTPUT_PREFIX: where the merged dataset goes (PREFIX_<key>_document.bin/.idx).
# JSON_KEYS: the jsonl fields to tokenize, space separated (one dataset per key).
# PREPROCESS_ARGS: more data_tools.preprocess flags; --append-eod separates documents in the
#   GPT stream (what data_tools.default_dataset does). --split-sentences for BERT.
# CPUS_PER_TASK: tokenizer worker processes per shard (and the CPUs each array task asks for).
# MAX_PARALLEL: at most this many shards run at once (array throttle, spares the filesystem).
# SBATCH_ARGS: more sbatch options for both jobs, e.g. "--partition=cpu --account=proj --time=4:00:00".
# KEEP_PARTS: 1 keeps the per-shard datasets after a successful merge.
# PYTHON: interpreter with mtds's dependencies (the active virtualenv's python).
INPUTS="${INPUTS:-data/raw/shard_*.jsonl}"
TOKENIZER_MODEL="${TOKENIZER_MODEL:-data/tokenizer.model}"
OUTPUT_PREFIX="${OUTPUT_PREFIX:-data/corpus}"
JSON_KEYS="${JSON_KEYS:-text}"
PREPROCESS_ARGS="${PREPROCESS_ARGS:---append-eod}"
CPUS_PER_TASK="${CPUS_PER_TASK:-16}"
MAX_PARALLEL="${MAX_PARALLEL:-64}"
SBATCH_ARGS="${SBATCH_ARGS:-}"
KEEP_PARTS="${KEEP_PARTS:-0}"
PYTHON="${PYTHON:-python}"

# ---- Nothing to edit below ---------------------------------------------------------------
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MTDS_ROOT="$(dirname "$here")"

# Expand the patterns; keep every file once, in sorted order (the merged order).
shopt -s nullglob
files=()
for pattern in $INPUTS; do
    for f in $pattern; do
        if [[ -f "$f" ]]; then files+=("$(realpath "$f")"); fi
    done
done
if [[ ${#files[@]} -eq 0 ]]; then
    echo "error: INPUTS='$INPUTS' matches no files; set INPUTS to your shards (e.g. 'data/raw/*.jsonl')" >&2
    exit 2
fi
mapfile -t files < <(printf '%s\n' "${files[@]}" | sort -u)
if [[ ! -f "$TOKENIZER_MODEL" ]]; then
    echo "error: TOKENIZER_MODEL=$TOKENIZER_MODEL not found; train one with python -m data_tools.train_tokenizer" >&2
    exit 2
fi
max_array=$(scontrol show config | sed -n 's/^MaxArraySize *= *\([0-9]*\).*/\1/p')
if [[ -n "$max_array" && ${#files[@]} -gt $((max_array - 1)) ]]; then
    echo "error: ${#files[@]} shards but the cluster allows arrays up to index $((max_array - 1)); concatenate shards first" >&2
    exit 2
fi

parts_dir="$(realpath -m "${OUTPUT_PREFIX}_parts")"
mkdir -p "$parts_dir" logs/slurm
printf '%s\n' "${files[@]}" > "$parts_dir/shards.txt"

# The jobs read these from their environment (sbatch exports the submitting environment).
export MTDS_PYTHON="$PYTHON" MTDS_ROOT PARTS_DIR="$parts_dir" SHARD_LIST="$parts_dir/shards.txt"
TOKENIZER_MODEL="$(realpath "$TOKENIZER_MODEL")"
OUTPUT_PREFIX="$(realpath -m "$OUTPUT_PREFIX")"
export TOKENIZER_MODEL OUTPUT_PREFIX JSON_KEYS PREPROCESS_ARGS KEEP_PARTS NUM_SHARDS="${#files[@]}"

# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
array_id=$(sbatch --parsable $SBATCH_ARGS --cpus-per-task="$CPUS_PER_TASK" \
    --array="0-$((${#files[@]} - 1))%$MAX_PARALLEL" "$here/preprocess_shard.sh")
array_id="${array_id%%;*}"  # --parsable prints "id;cluster" on multi-cluster set-ups
# shellcheck disable=SC2086
merge_id=$(sbatch --parsable $SBATCH_ARGS --dependency="afterok:$array_id" --kill-on-invalid-dep=yes \
    "$here/preprocess_merge.sh")
merge_id="${merge_id%%;*}"
echo "submitted ${#files[@]} shard(s) as array job $array_id and the merge as job $merge_id"
echo "output: ${OUTPUT_PREFIX}_<key>_document.bin/.idx for keys: $JSON_KEYS"
echo "watch: squeue -j $array_id,$merge_id   logs: logs/slurm/"
