#!/usr/bin/env bash
# Pretrain on 8 nodes x 8 GPUs under SLURM: one srun task per GPU, resumable, preemption-safe.
#
#   mkdir -p logs/slurm && sbatch slurm/pretrain_64gpu.sh [--section.key=value ...]
#
# Activate the virtualenv before `sbatch` (the job inherits the environment). Logs, the run
# directory and relative paths are relative to the directory you submit from. Everything you
# may want to change is an environment variable below with its default, e.g.
#
#   RUN_CONFIG=my_run.toml DS_CONFIG=ds_configs/zero3.json sbatch slurm/pretrain_64gpu.sh
#   sbatch --nodes=2 --time=4:00:00 slurm/pretrain_64gpu.sh --training.train_iters=5000
#   TENSOR_PARALLEL=8 sbatch slurm/pretrain_64gpu.sh        # TP=8 inside each node, DP=8 across nodes
#
# sbatch options given on the command line override the #SBATCH lines; the body reads the
# allocation from SLURM's environment, so no edit below the variables is ever needed.
#
# Why srun and not the `deepspeed` launcher with a hostfile: srun starts every rank itself, so
# no passwordless ssh/pdsh between nodes is needed; SLURM accounts for and cleans up every
# process; and SLURM's signals (time limit warning, preemption, scancel) reach the ranks
# through slurmd, not through a launcher that kills its children 30 s after forwarding one.
# Each task gets the variables torch.distributed reads (RANK, LOCAL_RANK, WORLD_SIZE,
# MASTER_ADDR, MASTER_PORT); `deepspeed.init_distributed` picks them up.
#
# Stopping cleanly. The trainer saves a checkpoint and exits 0 when its ranks get SIGTERM
# (all ranks agree on the step). That SIGTERM must reach the python ranks, never srun: srun
# answers SIGTERM by SIGKILLing its tasks ("forcing job termination"), which is also what
# happens at the hard time limit. So:
#   - 300 s before the time limit SLURM sends USR1 to this batch script (--signal=B:USR1@300;
#     SLURM may send it up to 60 s early). The trap below sends SIGTERM to the ranks of the
#     step (`scancel --signal=TERM <job>` signals steps, not the batch shell or srun), waits
#     for them to save, then requeues the job, which resumes from the checkpoint (--load).
#   - SIGTERM to this script (`scancel --batch --signal=TERM <job>`, preemption configs that
#     signal the batch shell) is forwarded the same way, without the self-requeue.
#   - Never `scancel --full --signal=TERM` or a plain `kill` of srun: srun kills the ranks.
#
#SBATCH --job-name=mtds-pretrain
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/slurm/%x-%j.out

set -euo pipefail

# ---- What to run (override any of these from the environment) ------------------------------
# MTDS_ROOT: the mtds checkout, visible at the same path on every node. Default: the checkout
#   this script was submitted from (sbatch runs a spooled copy, so SLURM is asked for the path).
#   Without a checkout there, PYTHON's installed mtds runs (`python -m mtds.pretrain`).
# PYTHON: the interpreter with mtds installed; `python` from the submitting shell's PATH.
# DS_CONFIG: DeepSpeed JSON (ZeRO stage, precision, optimizer, LR schedule, batch sizes).
# RUN_CONFIG: run config (.toml/.json: model, data, intervals); empty = defaults + arguments.
# RUN_DIR: checkpoints, TensorBoard and the resolved config. A fixed name per experiment, so a
#   requeued or resubmitted job finds its checkpoints and resumes (`--load $RUN_DIR`).
# LOG_DIR: per-job logs: each rank's stderr (tracebacks) and the job's environment.
# MASTER_ADDR/MASTER_PORT: rendezvous of torch.distributed; default the first node of the job
#   and a port derived from the job id (two jobs sharing a node do not collide).
# REQUEUE_AT_TIME_LIMIT: 1 = requeue the job after the time-limit checkpoint (0: just stop).
# TENSOR_PARALLEL: model.tensor_model_parallel_size, passed to mtds/pretrain.py; empty = the run
#   config's (1 by default). Data parallelism is then ranks / TP, and the DeepSpeed batch sizes are
#   per data-parallel rank. Keep TP a divisor of the GPUs per node: srun places consecutive ranks
#   on a node and TP groups are consecutive ranks, so TP <= 8 keeps every group on one node's
#   NVLink. TP all-reduces each layer's activations twice in the forward (and twice in the
#   backward), on the critical path of every layer; that needs intra-node bandwidth, while ZeRO's
#   data-parallel gradient reduction is once per step and overlaps the backward, so it is the one
#   to put across nodes. For 8x8 GPUs: TENSOR_PARALLEL=8 (DP=8), or 2/4 for smaller models that
#   fit (less communication per layer, more data parallelism). A checkpoint resumes only at its
#   own TP: to change it, start a new RUN_DIR with --training.init_from=<old run dir>.
# Arguments to this script are passed to mtds/pretrain.py (e.g. --training.train_iters=5000).
PYTHON="${PYTHON:-python}"
DS_CONFIG="${DS_CONFIG:-ds_configs/zero2.json}"
RUN_CONFIG="${RUN_CONFIG:-}"
RUN_DIR="${RUN_DIR:-runs/${SLURM_JOB_NAME:-mtds-pretrain}}"
LOG_DIR="${LOG_DIR:-logs/slurm/${SLURM_JOB_NAME:-mtds-pretrain}-${SLURM_JOB_ID:-local}}"
REQUEUE_AT_TIME_LIMIT="${REQUEUE_AT_TIME_LIMIT:-1}"
TENSOR_PARALLEL="${TENSOR_PARALLEL:-}"

# ---- Communication and threading ---------------------------------------------------------
# Empty means "leave the library default"; set the ones your cluster needs.
# NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME: network interface for NCCL's bootstrap and socket
#   traffic / for gloo (e.g. ib0, eth0, or ^docker,lo). Nodes with several NICs or docker
#   bridges otherwise may pick one the other nodes cannot reach: a hang at start-up.
# NCCL_IB_HCA: InfiniBand adapters to use (e.g. mlx5_0,mlx5_1); default all.
# NCCL_IB_GID_INDEX: RoCE clusters usually need 3 (RoCE v2 GID); plain InfiniBand leaves it.
# NCCL_IB_DISABLE: 1 on clusters without InfiniBand/RoCE, so NCCL uses TCP sockets.
# NCCL_IB_TIMEOUT: InfiniBand retry timeout exponent; 22 helps on large or busy fabrics.
# NCCL_DEBUG: WARN by default; INFO prints the chosen interfaces and transports (debug hangs).
# CUDA_DEVICE_MAX_CONNECTIONS: megatron-core's recommendation with tensor parallelism on GPUs
#   is 1 (one hardware queue: the tensor-parallel all-reduce is scheduled ahead of the matmul
#   that overlaps it). Set to 1 below when TENSOR_PARALLEL > 1; at TP=1 it stays unset, since 1
#   would serialise the streams ZeRO's overlap_comm uses. Setting it yourself wins.
# TORCH_EXTENSIONS_DIR: where DeepSpeed JIT-compiles its ops on first use; with a shared home
#   directory 64 ranks wait on one lock file, so a node-local path (e.g. /tmp/$USER/ext) helps.
NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-}"
GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-}"
NCCL_IB_HCA="${NCCL_IB_HCA:-}"
NCCL_IB_GID_INDEX="${NCCL_IB_GID_INDEX:-}"
NCCL_IB_DISABLE="${NCCL_IB_DISABLE:-}"
NCCL_IB_TIMEOUT="${NCCL_IB_TIMEOUT:-}"
NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-}"
TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-}"
# A rank whose collective fails or times out aborts instead of hanging; srun's
# --kill-on-bad-exit then ends the whole job (TORCH_ prefix since torch 2.2, old name before).
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_ASYNC_ERROR_HANDLING="${NCCL_ASYNC_ERROR_HANDLING:-1}"
# One OpenMP thread pool per rank sized to its CPUs: torch's default (all cores) times
# 8 ranks oversubscribes the node and starves the data loaders.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
# Progress lines reach the log as they are printed (stdout into a file is block-buffered).
export PYTHONUNBUFFERED=1

# ---- Nothing to edit below ---------------------------------------------------------------
if [[ -n "$TENSOR_PARALLEL" && "$TENSOR_PARALLEL" -gt 1 && -z "$CUDA_DEVICE_MAX_CONNECTIONS" ]]; then
    export CUDA_DEVICE_MAX_CONNECTIONS=1
fi
for var in NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME NCCL_IB_HCA NCCL_IB_GID_INDEX NCCL_IB_DISABLE \
           NCCL_IB_TIMEOUT NCCL_DEBUG CUDA_DEVICE_MAX_CONNECTIONS TORCH_EXTENSIONS_DIR; do
    if [[ -n "${!var}" ]]; then export "${var?}"; else unset "$var"; fi
done

# Installed first: USR1's default action would end this script without a checkpoint.
stop_requested=""
# shellcheck disable=SC2317  # only called from the traps below
forward_stop() {
    # $1: USR1 (time limit ahead) or TERM. The ranks get SIGTERM directly from slurmd.
    echo "=== $(date -Is) batch script got SIG$1: asking every rank to save a checkpoint and exit"
    if [[ "$1" == USR1 || -z "$stop_requested" ]]; then stop_requested="$1"; fi
    scancel --signal=TERM "$SLURM_JOB_ID" || true
}
trap 'forward_stop USR1' USR1
trap 'forward_stop TERM' TERM

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    echo "error: run this with sbatch (it reads the allocation from SLURM's environment)" >&2
    exit 2
fi

if [[ -z "${MTDS_ROOT:-}" ]]; then
    # `Command=` is the path given to sbatch; the checkout is the directory above slurm/.
    submitted=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    MTDS_ROOT=$(cd "$(dirname "$submitted")/.." 2>/dev/null && pwd) || MTDS_ROOT="$SLURM_SUBMIT_DIR"
fi
if [[ -f "$MTDS_ROOT/mtds/pretrain.py" ]]; then
    entry=("$MTDS_ROOT/mtds/pretrain.py")
elif "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mtds.pretrain') is None)" 2>/dev/null; then
    entry=(-m mtds.pretrain)  # an installed mtds (a wheel; this script from `mtds configs --copy DIR`)
else
    echo "error: MTDS_ROOT=$MTDS_ROOT has no mtds/pretrain.py and $PYTHON cannot import mtds; set MTDS_ROOT to the mtds checkout or PYTHON to an interpreter with mtds installed" >&2
    exit 2
fi
# Shipped configs may be named relative to the checkout (ds_configs/zero2.json).
if [[ ! -e "$DS_CONFIG" && -e "$MTDS_ROOT/$DS_CONFIG" ]]; then DS_CONFIG="$MTDS_ROOT/$DS_CONFIG"; fi
if [[ -n "$RUN_CONFIG" && ! -e "$RUN_CONFIG" && -e "$MTDS_ROOT/$RUN_CONFIG" ]]; then
    RUN_CONFIG="$MTDS_ROOT/$RUN_CONFIG"
fi

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
export MASTER_ADDR="${MASTER_ADDR:-${NODES[0]}}"
export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
mkdir -p "$LOG_DIR" "$RUN_DIR"

config_args=()
if [[ -n "$RUN_CONFIG" ]]; then config_args=(--config "$RUN_CONFIG"); fi
# Before "$@", so an argument to this script still overrides it.
if [[ -n "$TENSOR_PARALLEL" ]]; then config_args+=(--model.tensor_model_parallel_size="$TENSOR_PARALLEL"); fi
cmd=("$PYTHON" "${entry[@]}" --deepspeed_config "$DS_CONFIG" "${config_args[@]}"
     --run-dir "$RUN_DIR" --load "$RUN_DIR" "$@")

echo "=== $(date -Is) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${#NODES[@]} node(s): ${NODES[*]}"
echo "=== $SLURM_NTASKS ranks, master $MASTER_ADDR:$MASTER_PORT, run dir $RUN_DIR, logs $LOG_DIR"
echo "=== ${cmd[*]}"
env | grep -E '^(SLURM_|NCCL_|TORCH_|MASTER_|OMP_|CUDA_)' | sort > "$LOG_DIR/env.txt"

# The newest complete checkpoint (mtds writes `latest` only after every rank's shard is saved).
latest_checkpoint() { cat "$RUN_DIR/checkpoints/latest" 2>/dev/null || true; }
checkpoint_at_start=$(latest_checkpoint)


if [[ -n "$stop_requested" ]]; then
    echo "=== stop requested (SIG$stop_requested) before training started; exiting"
    exit 0
fi

# One task per GPU; every task turns SLURM's ids into torch.distributed's variables. All GPUs of
# a node stay visible to each task (LOCAL_RANK picks one), so no --gpus-per-task here.
# --cpus-per-task is repeated because srun does not inherit it from sbatch (SLURM 22.05+).
# shellcheck disable=SC2016  # $SLURM_* must expand inside each task, not here
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --error="$LOG_DIR/rank-%t.err" \
    bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' \
    rank "${cmd[@]}" &
srun_pid=$!
# `wait` returns early (status > 128) when a trapped signal arrives; keep waiting for srun.
while true; do
    rc=0
    wait "$srun_pid" || rc=$?
    if ! kill -0 "$srun_pid" 2>/dev/null; then break; fi
done

if [[ $rc -eq 143 && -n "$stop_requested" && "$(latest_checkpoint)" == "$checkpoint_at_start" ]]; then
    # SIGTERM before the trainer's handler is installed (model/data set-up) ends a rank with 143.
    echo "=== $(date -Is) stopped during start-up, before training: nothing new to save" >&2
elif [[ $rc -ne 0 ]]; then
    echo "=== $(date -Is) training failed (srun exit $rc); rank stderr in $LOG_DIR:" >&2
    for f in "$LOG_DIR"/rank-*.err; do
        if grep -qE 'Error|error:' "$f"; then echo "--- $f" >&2; tail -n 20 "$f" >&2; fi
    done
fi
if [[ "$stop_requested" == USR1 && "$REQUEUE_AT_TIME_LIMIT" == 1 ]]; then
    # Requeue only after progress: a time limit shorter than the --signal lead would
    # otherwise requeue forever without ever saving.
    if [[ "$(latest_checkpoint)" != "$checkpoint_at_start" ]]; then
        echo "=== $(date -Is) checkpoint $(latest_checkpoint) saved before the time limit; requeueing job $SLURM_JOB_ID"
        if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
        echo "=== scontrol requeue failed; resubmit to resume from the checkpoint" >&2
    fi
    echo "=== no new checkpoint since the job started; not requeueing (is --time shorter than the --signal lead?)" >&2
fi
echo "=== $(date -Is) finished (exit $rc)"
exit "$rc"
