"""What LoRA saves: optimizer state, checkpoint bytes and step time, LoRA vs full fine-tuning.

Trains a base GPT (--base-iters steps) on a small stdlib corpus, then two fine-tuning runs from it
(training.init_from) for --iters steps each, the same data and DeepSpeed JSON (1 rank, ZeRO-2,
fp32, torch Adam): all weights, and LoRA (training.lora_rank, all four megatron projections). It
prints a Markdown table of the last checkpoint of each: trainable parameters, the optimizer shard
(*optim_states.pt: fp32 master copy + Adam moments), the module states and the whole checkpoint
directory, and the median step time the run logged.

    python bench/lora_vs_full.py [--layers 8] [--hidden 512] [--rank 8] [--iters 4] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def du(paths) -> int:
    return sum(os.path.getsize(p) for p in paths)


def tree_bytes(path: str) -> int:
    return du(os.path.join(d, n) for d, _, names in os.walk(path) for n in names)


def pretrain(args: list[str]) -> str:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "mtds", "pretrain.py"), *args], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        sys.exit(f"pretrain failed:\n{out.stderr[-3000:]}")
    return out.stdout


def step_seconds(run_dir: str) -> float:
    """Median wall time per iteration from the run's TensorBoard scalars (the first one left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tensorboard"))
    acc.Reload()
    if "throughput/step_seconds" not in acc.Tags()["scalars"]:
        return float("nan")
    values = [e.value for e in acc.Scalars("throughput/step_seconds")][1:]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--base-iters", type=int, default=2)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--dir", default=None)
    a = p.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import build_tiny_data, write_ds_config

    tmp = tempfile.mkdtemp(prefix="lora-bench-", dir=a.dir)
    data = build_tiny_data(os.path.join(tmp, "data"))
    ds = write_ds_config(os.path.join(tmp, "ds.json"), stage=2, micro=2, precision="fp32", torch_adam=True)
    common = ["--deepspeed_config", ds, "--data.paths", data["prefix"], "--data.tokenizer_model", data["tokenizer_model"],
              "--data.split=98,2,0", "--model.preset=none", f"--model.num_layers={a.layers}",
              f"--model.hidden_size={a.hidden}", f"--model.num_attention_heads={a.hidden // 64}",
              "--model.max_position_embeddings=128", "--data.seq_length=128", "--training.eval_interval=1000",
              "--training.eval_iters=1", "--training.log_interval=1", "--training.progress_bar=false"]
    base = os.path.join(tmp, "base")
    pretrain([*common, "--run-dir", base, f"--training.train_iters={a.base_iters}"])
    rows = []
    for name, extra in (("full fine-tuning", []),
                        (f"LoRA r={a.rank}", [f"--training.lora_rank={a.rank}", f"--training.lora_alpha={2 * a.rank}"])):
        run = os.path.join(tmp, name.split()[0].lower())
        pretrain([*common, "--run-dir", run, f"--training.init_from={base}", f"--training.train_iters={a.iters}", *extra])
        ckpt = sorted(glob.glob(os.path.join(run, "checkpoints", "iter_*")))[-1]
        with open(os.path.join(run, "config.json")) as f:
            record = json.load(f)
        import torch

        module = torch.load(glob.glob(os.path.join(ckpt, "*model_states.pt"))[0], weights_only=False)["module"]
        trainable = sum(v.numel() for k, v in module.items() if torch.is_tensor(v) and not k.endswith("_extra_state"))
        rows.append((name, record["num_parameters"], trainable, du(glob.glob(os.path.join(ckpt, "*optim_states.pt"))),
                     du(glob.glob(os.path.join(ckpt, "*model_states.pt"))), tree_bytes(ckpt), step_seconds(run)))
    mb = 2**20
    print(f"GPT {a.layers} layers x {a.hidden}, seq 128, micro-batch 2, 1 rank, ZeRO-2 fp32, {a.iters} steps")
    print("| run | model params | saved trainable params | optimizer shard | module states | checkpoint dir | s/step |")
    print("|---|---|---|---|---|---|---|")
    for name, n, t, opt, mod, whole, sec in rows:
        print(f"| {name} | {n / 1e6:.2f}M | {t / 1e6:.3f}M | {opt / mb:.1f} MiB | {mod / mb:.2f} MiB | "
              f"{whole / mb:.1f} MiB | {sec:.2f} |")


if __name__ == "__main__":
    main()
