"""Model-state memory per rank under tensor parallelism and ZeRO, measured in a real engine.

For each tensor-parallel size (--tp) this script launches itself on --ranks processes with the
`deepspeed` launcher (DP = ranks / TP). Each rank builds the engine with mtds's own code
(mtds.ds_config.resolve_ds_config, mtds.train.engine.build_engine with the DeepSpeed mpu of
mtds.parallel.tensor_parallel) for each ZeRO stage (ds_configs/zero{1,2,3}.json, micro-batch 1), runs one
forward/backward and one optimizer step on a synthetic batch, and adds up the bytes of the
tensors the rank holds, each storage counted once, in the first of these that reaches it:

- params: the module's parameters (`ds_tensor`, the rank's slice, under ZeRO-3);
- grads: after backward, before the step: `.grad` of the module's parameters, DeepSpeed's
  gradient partition (ZeRO-2 `averaged_gradients`/`grads_in_partition`, ZeRO-3
  `grad_partitions_flat_buffer`);
- fp32 master: DeepSpeed's fp32 partition of the weights (ZeRO-1/2 `single_partition_of_fp32_groups`,
  ZeRO-3 `fp32_partitioned_groups_flat`; under ZeRO-3 in fp32 it *is* the parameter slice, so 0);
- Adam: the inner optimizer's `exp_avg` and `exp_avg_sq`.

What lives only during backward is not counted: the full-size gradients before DeepSpeed reduces
them into the rank's partition (ZeRO-1 too keeps only the partition once backward has ended, at
gradient_accumulation_steps=1) and ZeRO's reduce buckets (reduce_bucket_size elements each).

against the formula (N_split = parameters megatron-core splits over the TP ranks: embedding, output
layer, QKV, projection, MLP; N_rep = the replicated norms; counted from the config, not the model):

    N_rank = N_split / TP + N_rep
    params = N_rank * b_param (/ DP at ZeRO-3),  grads = N_rank * b_grad (/ DP at ZeRO-2/3),
    master = N_rank * 4 / DP (0 where it aliases the params),  Adam = N_rank * 8 / DP

    python bench/bench_tp_memory.py [--ranks 2] [--tp 1,2] [--stages 1,2,3]
        [--layers 4 --hidden 512 --heads 8 --vocab 8192]    # --smoke: tiny shapes, ZeRO-2 only

On a CPU without native bf16 the bf16 configs train in fp32 (mtds.ds_config), so b_param = b_grad = 4.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")

DS_CONFIGS = {1: "ds_configs/zero1.json", 2: "ds_configs/zero2.json", 3: "ds_configs/zero3.json"}
CATEGORIES = ("params", "grads", "master", "adam")


# -- the formula ---------------------------------------------------------------------------
def split_and_replicated(m, vocab: int) -> tuple[int, int]:
    """(N_split, N_rep) of a dense megatron-core GPT (no biases, SwiGLU, RMSNorm, untied output),
    from the config alone, so that the measured numel is checked against it, not derived from it."""
    h, L = m.hidden_size, m.num_layers
    kv = h // m.num_attention_heads
    groups = m.num_query_groups or m.num_attention_heads
    qkv = h * (m.num_attention_heads + 2 * groups) * kv
    mlp = h * 2 * m.ffn_size() + m.ffn_size() * h  # fc1 holds gate and up (2 x ffn), fc2 ffn -> h
    split = 2 * vocab * h + L * (qkv + h * h + mlp)  # embedding + output layer + layers
    replicated = L * 2 * h + h  # two norms per layer + the final norm
    return split, replicated


def expected(n_split: int, n_rep: int, tp: int, dp: int, stage: int, b_param: int, master_aliases: bool) -> dict:
    n_rank = n_split / tp + n_rep
    return {"params": n_rank * b_param / (dp if stage == 3 else 1),
            "grads": n_rank * b_param / (dp if stage >= 2 else 1),
            "master": 0 if master_aliases else n_rank * 4 / dp,
            "adam": n_rank * 8 / dp}


# -- measurement on one rank ------------------------------------------------------------
class Ledger:
    """Bytes per category, each tensor storage counted once (DeepSpeed's flat buffers are viewed
    by many parameters, and an fp32 master may be the parameter itself)."""

    def __init__(self):
        self.seen: set[int] = set()
        self.bytes = dict.fromkeys(CATEGORIES, 0)

    def add(self, category: str, tensors) -> None:
        import torch

        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.numel() == 0:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in self.seen:
                continue
            self.seen.add(storage.data_ptr())
            self.bytes[category] += storage.nbytes()


def _flat(x):
    """The tensors inside DeepSpeed's nested lists/dicts of tensors (None entries skipped)."""
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flat(item)]
    return [] if x is None else [x]


def measure(stage: int, cfg, vocab: int, seq: int) -> dict:
    import torch

    from bench.train_throughput import synthetic_batches
    from mtds.ds_config import load_ds_config, precision, resolve_ds_config
    from mtds.tasks.causal_lm import forward_step
    from mtds.train.engine import build_engine
    from megatron.core import parallel_state

    quiet = lambda *a, **k: None  # noqa: E731
    path = os.path.join(ROOT, DS_CONFIGS[stage])
    raw = load_ds_config(path)
    raw.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    raw.pop("train_batch_size", None)
    dp = parallel_state.get_data_parallel_world_size()
    ds_cfg = resolve_ds_config(raw, path, dp, 100, torch.cuda.is_available(), log=quiet,
                               cpu_native_bf16=_native_bf16())
    engine, n_params, _ = build_engine(cfg, cfg.kind, ds_cfg, vocab, torch.cuda.is_available(), log=quiet)
    opt = engine.optimizer
    module_params = list(engine.module.parameters())
    ledger = Ledger()
    # Under ZeRO-3 a parameter is an empty placeholder outside forward; its slice is ds_tensor.
    ledger.add("params", [getattr(p, "ds_tensor", p) for p in module_params])
    numel_local = sum(getattr(p, "ds_numel", p.numel()) for p in module_params)  # the rank's TP shard, whole

    batch = synthetic_batches(1, 1, seq, vocab, engine.device)[0]
    sums, _ = forward_step(engine, batch, engine.device)
    loss = sums["lm"] / batch["loss_mask"].sum()  # the per-token mean
    engine.backward(loss)
    ledger.add("grads", [p.grad for p in module_params])
    ledger.add("grads", _flat(getattr(opt, "averaged_gradients", None)))
    ledger.add("grads", [getattr(opt, "grads_in_partition", None), getattr(opt, "grad_partitions_flat_buffer", None)])
    engine.step()
    ledger.add("master", _flat(getattr(opt, "single_partition_of_fp32_groups", None)))
    ledger.add("master", _flat(getattr(opt, "fp32_partitioned_groups_flat", None)))
    inner = getattr(opt, "optimizer", opt)
    ledger.add("adam", [s.get(k) for s in inner.state.values() for k in ("exp_avg", "exp_avg_sq")])
    # Under ZeRO-3 in fp32 the master partition is the parameter slice itself (no copy).
    aliases = stage == 3 and precision(ds_cfg) == "fp32"
    out = dict(rank=torch.distributed.get_rank(), tp=parallel_state.get_tensor_model_parallel_world_size(),
               dp=dp, stage=stage, precision=precision(ds_cfg), n_params=n_params, numel_local=numel_local,
               master_aliases=aliases, loss=float(loss.detach()), **ledger.bytes)
    if hasattr(engine, "destroy"):
        engine.destroy()
    return out


def _native_bf16() -> bool:
    from mtds.cpu_compat import has_native_bf16

    return has_native_bf16()


def model_config(a):
    from mtds.config import build_config

    return build_config(overrides={"model": {
        "preset": "gpt-tiny", "num_layers": a.layers, "hidden_size": a.hidden, "num_attention_heads": a.heads,
        "max_position_embeddings": a.seq, "tensor_model_parallel_size": a.worker_tp}})


def worker(a) -> int:
    import torch

    from mtds.parallel.process_groups import init_distributed

    init_distributed(tensor_parallel=a.worker_tp)
    cfg = model_config(a)
    rows = [measure(stage, cfg, a.vocab, a.seq) for stage in a.stages]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, rows)
    if torch.distributed.get_rank() == 0:
        with open(a.worker_out, "w") as f:
            for rank_rows in gathered:
                for r in rank_rows:
                    f.write(json.dumps(r) + "\n")
    # Leave together and close the groups ourselves: a rank that exits while its peer's gloo
    # threads still run once ended in "terminate called without an active exception" (exit 250).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


# -- driver --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(a, tp: int, out_path: str) -> None:
    """One `deepspeed` launch of this script per TP size: the parallel groups are made once per process."""
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", str(a.ranks), "--master_port", str(_free_port()), os.path.abspath(__file__),
           "--worker-tp", str(tp), "--worker-out", out_path, "--stages", ",".join(map(str, a.stages)),
           "--layers", str(a.layers), "--hidden", str(a.hidden), "--heads", str(a.heads),
           "--vocab", str(a.vocab), "--seq", str(a.seq)]
    env = dict(os.environ)
    env.pop("RANK", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(out_path):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"TP={tp} launch failed (exit {proc.returncode})")


def mib(x: float) -> str:
    return f"{x / 2**20:.1f}"


def print_table(rows: list[dict], a) -> None:
    cfg = model_config(argparse.Namespace(**{**vars(a), "worker_tp": 1}))
    n_split, n_rep = split_and_replicated(cfg.model, a.vocab)
    print(f"GPT {a.layers} layers x {a.hidden} hidden, {a.heads} heads, ffn {cfg.model.ffn_size()}, vocab {a.vocab}: "
          f"N = {(n_split + n_rep) / 1e6:.2f}M ({n_split / 1e6:.2f}M split over TP, {n_rep} replicated); "
          f"{a.ranks} ranks; MiB per rank, measured (formula)\n")
    print("| TP | DP | ZeRO | precision | params on the rank | params | grads | fp32 master | Adam m+v | "
          "model state | formula | measured / formula |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = 2 if r["precision"] in ("bf16", "fp16") else 4
        exp = expected(n_split, n_rep, r["tp"], r["dp"], r["stage"], b, r["master_aliases"])
        cells = [f"{mib(r[k])} ({mib(exp[k])})" for k in CATEGORIES]
        total, total_exp = sum(r[k] for k in CATEGORIES), sum(exp.values())
        print(f"| {r['tp']} | {r['dp']} | {r['stage']} | {r['precision']} | {r['numel_local'] / 1e6:.2f}M "
              f"({(n_split / r['tp'] + n_rep) / 1e6:.2f}M) | " + " | ".join(cells) +
              f" | {mib(total)} | {mib(total_exp)} | {total / total_exp:.3f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--tp", default="1,2", help="tensor-parallel sizes, each a separate launch")
    p.add_argument("--stages", default="1,2,3", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="tiny shapes and ZeRO-2 only (the test's check)")
    p.add_argument("--json", help="append one JSON line per rank and configuration here")
    p.add_argument("--worker-tp", type=int, help=argparse.SUPPRESS)  # set by launch(): run as one rank
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    a = p.parse_args(argv)
    if a.smoke:
        a.layers, a.hidden, a.heads, a.vocab, a.seq, a.stages = 2, 64, 4, 256, 16, [2]
    if a.worker_tp is not None:
        return worker(a)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tp-memory-") as work:
        for tp in (int(x) for x in a.tp.split(",")):
            out = os.path.join(work, f"tp{tp}.jsonl")
            launch(a, tp, out)
            with open(out) as f:
                rows += [json.loads(line) for line in f]
    if a.json:
        with open(a.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    # Ranks of one configuration hold the same amounts up to ZeRO's alignment padding: show rank 0
    # and say how far the others are from it.
    first = [r for r in rows if r["rank"] == 0]
    print_table(first, a)
    spread = max(abs(sum(r[k] for k in CATEGORIES) - sum(f[k] for k in CATEGORIES))
                 for f in first for r in rows if (r["tp"], r["stage"]) == (f["tp"], f["stage"]))
    print(f"\nrank 0 shown; the other ranks' model state differs from it by at most {spread / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
