#!/usr/bin/env bash
# Tensor parallelism on a lent machine with GPUs: throughput at TP=1/2/4/8 and the TP=1 check.
#   bash bench/tp_gpu_check.sh setup check          (1 GPU is enough; ~5 min est., not run yet)
#   bash bench/tp_gpu_check.sh setup scale          (2+ GPUs; ~2 min per TP size est., not run yet)
#   bash bench/tp_gpu_check.sh setup scale-sp       (2+ GPUs: TP=2 with sequence parallelism)
# Stages:
#   check     GPT-1.3b ZeRO-2 bf16, micro-batch 8, one GPU, bench/train_throughput.py (which builds
#             the engine with mtds.train.engine.build_engine: since commit 7c8fc50 that is the
#             tensor-parallel code path with the DeepSpeed mpu, at TP=1). Against the same command
#             in a worktree of REF_COMMIT (the commit before tensor parallelism), same lease, same
#             GPU, when the copy has its git history; otherwise against the H100 figure of
#             bench/RESULTS.md (43,871 tokens/s), which only means something on an H100.
#             Pass: tokens/s within 2% of the reference.
#   scale     mtds/pretrain.py on all NGPU GPUs (torch.distributed.run), GPT-1.3b, ZeRO-2 bf16,
#             micro-batch 8 per data-parallel rank, seq 2048, the default corpus, ITERS iterations;
#             TP = 1, 2, 4, 8 while TP <= NGPU (DP = NGPU / TP). Tokens/s and TFLOP/s per GPU from
#             the trainer's last log line (iterations ITERS-9 .. ITERS, after warm-up).
#   scale-sp  the same at TP=2 with model.sequence_parallel=true.
# TP > 1 runs export CUDA_DEVICE_MAX_CONNECTIONS=1 (megatron-core's setting with tensor
# parallelism: the tensor-parallel all-reduce is queued ahead of the next matmul), TP=1 runs leave it
# unset, as slurm/pretrain_64gpu.sh does. Each run saves its final checkpoint (the trainer always
# does; ~17 GB at 1.3b), deleted right after.
# Environment: NGPU (default: nvidia-smi's count), PRESET (gpt-1.3b), MICRO (8), SEQ (2048), ITERS (40; the
# LR warm-up of ds_configs/zero2.json is 30 steps), REF_COMMIT (011bb53). Logs and the tables go
# to $OUT (bench_out/ when unset). setup: bench/gpu_suite.sh's (the carried wheels into .site).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-bench_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the check stage runs from another checkout too
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.ext} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16
export PYTHONWARNINGS="ignore::UserWarning"
py=${PY:-python3}  # PY: another interpreter (e.g. .venv/bin/python for a CPU dry run with PRESET=gpt-tiny)
PRESET=${PRESET:-gpt-1.3b}
MICRO=${MICRO:-8}
ITERS=${ITERS:-40}
SEQ=${SEQ:-2048}  # the check stage's sequence length (scale: the preset's max_position_embeddings)
REF_COMMIT=${REF_COMMIT:-011bb53}
REF_H100_TOKENS=43871  # bench/RESULTS.md: gpt-1.3b ZeRO-2 bf16, micro 8, fused SwiGLU, H100 80GB
if [[ -z "${NGPU:-}" ]]; then
  NGPU=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
fi

# tokens/s of the one result line train_throughput.py writes to the JSON file $1
json_tokens() { "$py" -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).readline())["tokens_per_s"]))' "$1"; }

# bench/train_throughput.py on one GPU from the checkout $1, its JSON result in $2
one_gpu_throughput() {
  rm -f "$2"
  local site=$PWD/.site  # the wheels installed by setup, in this checkout
  # From inside $1: its bench script names ds_configs/ relative to the working directory.
  (cd "$1" && PYTHONPATH=$site:$1 CUDA_VISIBLE_DEVICES=0 "$py" bench/train_throughput.py --presets "$PRESET" \
    --variants z2 --micro "$MICRO" --seq "$SEQ" --warmup 5 --steps 10 --json "$2" 2>>"$OUT/stderr.log" | tail -3)
}

# One mtds/pretrain.py run on all NGPU GPUs at tensor-parallel size $1; $2 = sequence parallel
# (true/false). Appends a table row to $OUT/tp_scale.md.
pretrain_tp() {
  local tp=$1 sp=$2 run_dir="/tmp/mtds_tp$1_sp$2" log="$OUT/tp$1_sp$2.log"
  if (( NGPU % tp )); then echo "skip TP=$tp: $NGPU GPUs"; return 0; fi
  rm -rf "$run_dir"
  # ds_configs/zero2.json with the micro-batch set to MICRO (pretrain.py takes it from the JSON only)
  "$py" -c 'import json, sys; c = json.load(open("ds_configs/zero2.json")); c["train_micro_batch_size_per_gpu"] = int(sys.argv[1])
json.dump(c, open(sys.argv[2], "w"), indent=2)' "$MICRO" "$OUT/ds_tp.json" || return 1
  local -a env_tp=()
  if (( tp > 1 )); then env_tp=(env CUDA_DEVICE_MAX_CONNECTIONS=1); fi
  "${env_tp[@]}" "$py" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" mtds/pretrain.py \
    --deepspeed_config "$OUT/ds_tp.json" --run-dir "$run_dir" --model.preset="$PRESET" \
    --model.tensor_model_parallel_size="$tp" --model.sequence_parallel="$sp" \
    --training.train_iters="$ITERS" --training.log_interval=10 --training.eval_interval=100000 \
    --training.eval_iters=1 > "$log" 2>&1
  local rc=$?
  rm -rf "$run_dir"
  # The trainer's line: "... | 123,456 tok/s | 401.23 TFLOP/s/dev | ..."; tok/s counts every GPU.
  local line tokens tflops
  line=$(grep "iter *$ITERS/$ITERS" "$log" | tail -1)
  tokens=$(sed -n 's/.*| \([0-9,]*\) tok\/s |.*/\1/p' <<<"$line" | tr -d ,)
  tflops=$(sed -n 's/.* \([0-9.]*\) TFLOP\/s\/dev.*/\1/p' <<<"$line")
  if [[ $rc -ne 0 || -z "$tokens" ]]; then
    echo "| $tp | $((NGPU / tp)) | $sp | failed (exit $rc), see $log | | | |" | tee -a "$OUT/tp_scale.md"
    grep -E "Error|error:" "$log" | tail -3
    return 0
  fi
  echo "| $tp | $((NGPU / tp)) | $sp | $((MICRO * NGPU / tp)) | $tokens | $((tokens / NGPU)) | $tflops |" \
    | tee -a "$OUT/tp_scale.md"
}

scale_header() {
  echo "$PRESET, ZeRO-2 bf16, micro-batch $MICRO per data-parallel rank, $NGPU GPUs, iterations $((ITERS - 9))-$ITERS" \
    | tee -a "$OUT/tp_scale.md"
  echo "| TP | DP | sequence parallel | global batch | tokens/s (all GPUs) | tokens/s per GPU | TFLOP/s per GPU |" \
    | tee -a "$OUT/tp_scale.md"
  echo "|---|---|---|---|---|---|---|" | tee -a "$OUT/tp_scale.md"
}

for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    setup)
      bash bench/gpu_suite.sh setup || exit 1
      echo "GPUs: $NGPU" ;;
    check)
      echo "new code path (this tree, TP=1):"
      one_gpu_throughput "$PWD" "$OUT/tp1_new.json"
      new=$(json_tokens "$OUT/tp1_new.json") || { echo "no result; see $OUT/stderr.log"; continue; }
      ref="" ref_name=""
      if git rev-parse --verify -q "$REF_COMMIT^{commit}" >/dev/null 2>&1; then
        rm -rf /tmp/mtds_ref && git worktree prune
        if git worktree add -f --detach /tmp/mtds_ref "$REF_COMMIT" >/dev/null 2>&1; then
          echo "reference (commit $REF_COMMIT, before tensor parallelism):"
          one_gpu_throughput /tmp/mtds_ref "$OUT/tp1_ref.json"
          ref=$(json_tokens "$OUT/tp1_ref.json") && ref_name="commit $REF_COMMIT, this GPU"
          git worktree remove --force /tmp/mtds_ref
        fi
      fi
      if [[ -z "$ref" ]]; then
        ref=$REF_H100_TOKENS ref_name="bench/RESULTS.md, H100 80GB (valid only on an H100)"
        nvidia-smi --query-gpu=name --format=csv,noheader | head -1
      fi
      "$py" -c 'import sys; new, ref = int(sys.argv[1]), int(sys.argv[2]); d = new / ref - 1
print(f"TP=1 new path {new:,} tokens/s vs {ref:,} ({sys.argv[3]}): {d:+.1%} -> "
      + ("PASS (within 2%)" if abs(d) <= 0.02 else "FAIL (more than 2% apart)"))' "$new" "$ref" "$ref_name" \
        | tee -a "$OUT/tp_check.log" ;;
    scale)
      scale_header
      for tp in 1 2 4 8; do
        if (( tp <= NGPU )); then pretrain_tp "$tp" false; fi
      done ;;
    scale-sp)
      if (( NGPU < 2 )); then echo "skip: sequence parallelism needs TP >= 2 GPUs"; continue; fi
      scale_header
      pretrain_tp 2 true ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S)"
