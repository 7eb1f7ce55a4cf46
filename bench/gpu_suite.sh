#!/usr/bin/env bash
# The GPU benchmarks of bench/RESULTS.md, in stages, for one lease of the lent GPU machine.
#   bash bench/gpu_suite.sh setup profile throughput tune   (~10 min with the FusedAdam build)
#   bash bench/gpu_suite.sh setup entry confirm memory         (~5 min)
#   bash bench/gpu_suite.sh setup compile                      (~6 min est.; not run yet, first priority)
#   bash bench/gpu_suite.sh setup compile-350m                 (~5 min est.; not run yet)
#   bash bench/gpu_suite.sh setup fit                          (~8 min est.; not run yet)
#   bash bench/gpu_suite.sh setup fit-offload sweep            (~9 min est.; not run yet)
#   bash bench/gpu_suite.sh setup docmask                      (~2 min est.; not run yet)
# The wheels must include orjson (data_tools needs it for the default corpus).
# Logs go to $OUT (or bench_out/ when unset); each stage prints its own table last.
# setup installs the carried wheels (.whl, see shared/device/README.md) into .site once.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
# DeepSpeed JIT-builds FusedAdam (and CPUAdam for offload) on first use: Hopper only, cached here.
export TORCH_EXTENSIONS_DIR=$PWD/.ext TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
export PYTHONWARNINGS="ignore::UserWarning" DS_ACCELERATOR=cuda
py=python3
tp() { $py bench/train_throughput.py --json "$OUT/results.jsonl" "$@" 2>>"$OUT/stderr.log"; }

for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    setup)
      [ -d .site/deepspeed ] && [ -d .site/orjson ] || $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target .site .whl/*.whl || exit 1
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
      $py -c "import torch, deepspeed, megatron.core as m; print(torch.__version__, torch.version.cuda, deepspeed.__version__, m.__version__)"
      ;;
    throughput)  # the main table: 3 presets x ZeRO-1/2 bf16, ZeRO-2 fp16, plain PyTorch
      tp --presets gpt-125m,gpt-350m,gpt-1.3b --variants z1,z2,z2-fp16,torch \
         --micro gpt-125m=16,gpt-350m=16,gpt-1.3b=8 --warmup 5 --steps 10 | tee "$OUT/throughput.log" ;;
    tune)  # raising MFU: megatron-core native fusions, bigger micro-batches, recompute, torch.compile
      tp --presets gpt-1.3b --variants z2+cefuse,z2+swiglufuse,z2+recompute,torch-compile --micro 8 \
         --warmup 5 --steps 10 | tee "$OUT/tune.log"
      tp --presets gpt-1.3b --variants z2+cefuse+swiglufuse+recompute --micro 16 --warmup 3 --steps 8 | tee -a "$OUT/tune.log"
      tp --presets gpt-350m --variants z2+cefuse+swiglufuse,torch-compile --micro 16 --warmup 5 --steps 10 | tee -a "$OUT/tune.log"
      tp --presets gpt-125m,gpt-350m --variants z2 --micro 32 --warmup 5 --steps 10 | tee -a "$OUT/tune.log" ;;
    profile)
      $py bench/profile_step.py --preset gpt-1.3b --variant z2 --micro 8 2>>"$OUT/stderr.log" | tee "$OUT/profile.log" ;;
    confirm)  # the default build after the fused-SwiGLU change, 1.3b and 350m
      tp --presets gpt-1.3b,gpt-350m --variants z2 --micro gpt-1.3b=8,gpt-350m=16 --warmup 5 --steps 10 \
        | tail -4 | tee "$OUT/confirm.log" ;;
    memory)  # model-state memory per ZeRO stage at dp=1 (micro-batch 1): one process each, since
             # ZeRO-3 and offload engines do not hand all their memory back when destroyed
      for v in z1 z2 z3 z2-offload; do
        tp --presets gpt-1.3b --variants $v --micro 1 --warmup 1 --steps 2 | tail -1 | tee -a "$OUT/memory.log"
      done ;;
    sweep)  # micro-batch sweep with the fused SwiGLU now on by default (mtds/models/common.py)
      tp --presets gpt-1.3b --variants z2 --micro 8 --warmup 5 --steps 10 | tee "$OUT/sweep.log"
      tp --presets gpt-1.3b --variants z2 --micro 12 --warmup 5 --steps 10 | tail -1 | tee -a "$OUT/sweep.log"
      tp --presets gpt-350m --variants z2,z2-fp16 --micro 24 --warmup 5 --steps 10 | tail -2 | tee -a "$OUT/sweep.log"
      tp --presets gpt-125m --variants z2 --micro 24 --warmup 5 --steps 10 | tail -1 | tee -a "$OUT/sweep.log" ;;
    fit)  # largest GPT (hidden 2048, 16 heads, more layers) per ZeRO variant, micro-batch 1 (bench/largest_fit.py):
          # estimated 4.2 B params (~80 layers) for ZeRO-1/2 + recompute, ~7 B with offload (host-bound)
      $py bench/largest_fit.py --variants z2+recompute,z3+recompute --lo 64 --hi 96 --timeout 150 2>>"$OUT/stderr.log" \
        | tee "$OUT/fit.log" ;;
    fit-offload)
      $py bench/largest_fit.py --variants z2-offload+recompute --lo 96 --hi 160 --step 8 --timeout 200 2>>"$OUT/stderr.log" \
        | tee "$OUT/fit_offload.log" ;;
    compile)  # training.compile (mtds/train/compile.py): per-layer torch.compile and DeepSpeed's whole-module
              # engine.compile(), against the eager default in the same stage
      tp --presets gpt-1.3b --variants z2,z2+layers,z2+compile --micro 8 --warmup 5 --steps 10 | tee "$OUT/compile.log" ;;
    compile-350m)
      tp --presets gpt-350m --variants z2,z2+layers,z2+compile --micro 16 --warmup 5 --steps 10 | tee "$OUT/compile_350m.log" ;;
    docmask)  # data.document_mask / gpt_sft packing: dense [s, s] SDPA mask vs FlexAttention BlockMask
      for seq in 2048 8192; do
        $py bench/bench_document_mask.py --seq $seq --batch 4 --heads 16 --docs 8 2>>"$OUT/stderr.log" | tee -a "$OUT/docmask.log"
      done ;;
    entry)  # the real entry point, default tiny model and default corpus (built here on first use)
      for cfg in zero2_fp16 zero2; do
        rm -rf "/tmp/mtds_$cfg"  # this suite's own scratch run dir: a fresh run into a used one is refused
        /usr/bin/time -f "wall %e s" $py mtds/pretrain.py --deepspeed_config ds_configs/$cfg.json \
          --run-dir /tmp/mtds_$cfg --training.train_iters=200 --training.log_interval=50 \
          --training.eval_interval=100 --training.eval_iters=5 2>&1 | grep -v -i warn | tee -a "$OUT/entry.log"
      done ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S)"
