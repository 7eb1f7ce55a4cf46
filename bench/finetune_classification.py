"""BERT classification fine-tuning curve on the embedded default corpus (no download): code vs prose.

    python bench/finetune_classification.py [--pretrain-iters 300] [--finetune-iters 300] [--scratch] [--lora 8]

Steps, each the real command (run from the repository root, one process at a time):
1. pretrain bert-tiny (MLM + SOP) on the default corpus (`data/stdlib`, sentence-split on first
   use) into runs/bench-bert-tiny (skipped if it already has a checkpoint);
2. `data_tools.cls_corpus` + `data_tools.classify` -> data/code_prose_cls_document;
3. fine-tune `bert_cls` from it (`training.init_from`), saving every `--save-every` steps;
4. `mtds.evaluate --json --tag ...` on every checkpoint: exact accuracy and macro-F1 over the
   same validation samples (the first --eval-iters x 16 of the 10% validation split), and the
   majority-class accuracy of those samples; then the per-class table of the last checkpoint.
`--scratch` also fine-tunes the same model from random weights, for comparison; `--lora R` also
fine-tunes it from bert-tiny with rank-R LoRA adapters on every projection (the pooler and the head
trained whole; `--lora-lr`, since adapters usually want a larger step than all weights) and adds a table
of trainable parameters, optimizer-state and checkpoint bytes for each run's last checkpoint.
Prints markdown tables for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
DS = "ds_configs/bert_zero2.json"  # micro-batch 16, Adam 5e-4, linear warmup 30 + linear decay (bf16 -> fp32 on AVX2)


def run(cmd: list[str]) -> str:
    t0 = time.time()
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    print(f"  {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return out.stdout


def finetune(run_dir: str, a, init_from: str | None, ds: str = DS, extra: tuple = ()) -> list[dict]:
    prefix = "data/code_prose_cls_document"
    log = run([PY, "mtds/pretrain.py", "--deepspeed_config", ds, "--model-type", "bert_cls", "--model.preset=bert-tiny",
               "--data.paths", prefix, "--data.tokenizer_model", "data/stdlib/tokenizer.model", "--data.split=90,10,0",
               "--run-dir", run_dir, f"--training.train_iters={a.finetune_iters}",
               f"--training.save_interval={a.save_every}", f"--training.keep_last={a.finetune_iters // a.save_every}",
               f"--training.eval_interval={a.save_every}", f"--training.eval_iters={a.eval_iters}",
               "--training.progress_bar=false", *(["--training.init_from", init_from] if init_from else []), *extra])
    print("\n".join(line for line in log.splitlines() if line.startswith(("note:", "initialised", "model:", "LoRA:"))),
          file=sys.stderr)
    rows = []
    for step in range(a.save_every, a.finetune_iters + 1, a.save_every):
        out = run([PY, "-m", "mtds.evaluate", "--load", run_dir, "--tag", f"iter_{step:07d}", "--json", "--no-progress",
                   f"--eval-iters={a.eval_iters}"])
        rows.append({"step": step, **json.loads(out.strip().splitlines()[-1])})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrain-iters", type=int, default=300)
    p.add_argument("--finetune-iters", type=int, default=300)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--eval-iters", type=int, default=50, help="validation micro-batches of 16 per evaluation")
    p.add_argument("--scratch", action="store_true", help="also fine-tune from random weights")
    p.add_argument("--lora", type=int, default=0, metavar="R", help="also fine-tune with rank-R LoRA adapters")
    p.add_argument("--lora-lr", type=float, default=5e-3, help="the LoRA run's peak LR (the JSON's is 5e-4)")
    a = p.parse_args()
    pre = "runs/bench-bert-tiny"
    if not os.path.isdir(os.path.join(ROOT, pre, "checkpoints")):
        t0 = time.time()
        log = run([PY, "mtds/pretrain.py", "--deepspeed_config", DS, "--model-type", "bert", "--model.preset=bert-tiny",
                   "--run-dir", pre, f"--training.train_iters={a.pretrain_iters}", "--training.eval_interval=100",
                   "--training.progress_bar=false"])
        print("\n".join(line for line in log.splitlines() if line.startswith(("validation", "model:"))), file=sys.stderr)
        print(f"pretraining (with the default corpus build): {time.time() - t0:.0f} s", file=sys.stderr)
    run([PY, "-m", "data_tools.cls_corpus", "--output", "data/code_prose.jsonl"])
    run([PY, "-m", "data_tools.classify", "--input", "data/code_prose.jsonl", "--output-prefix", "data/code_prose",
         "--tokenizer-model", "data/stdlib/tokenizer.model"])
    t0 = time.time()
    curves = {"from bert-tiny": finetune("runs/bench-cls", a, pre)}
    print(f"fine-tuning + evaluations: {time.time() - t0:.0f} s", file=sys.stderr)
    runs = {"from bert-tiny": "runs/bench-cls"}
    if a.scratch:
        curves["from scratch"] = finetune("runs/bench-cls-scratch", a, None)
    if a.lora:
        name, runs[name] = f"LoRA r={a.lora} from bert-tiny", "runs/bench-cls-lora"
        curves[name] = finetune(runs[name], a, pre, lora_ds_config(a.lora_lr),
                                (f"--training.lora_rank={a.lora}", f"--training.lora_alpha={2 * a.lora}"))
    print("| start | step | val acc | val macro-F1 | val loss | majority-class acc |")
    print("|---|---|---|---|---|---|")
    for name, rows in curves.items():
        for r in rows:
            print(f"| {name} | {r['step']} | {r['acc']:.4f} | {r['macro_f1']:.4f} | {r['loss']:.4f} | {r['majority_acc']:.4f} |")
    for name, run_dir in runs.items():
        print(f"{name}:\n" + run([PY, "-m", "mtds.evaluate", "--load", run_dir, "--no-progress", "--eval-iters=1000"]))
    if a.lora:
        sizes(runs)


def lora_ds_config(lr: float) -> str:
    """DS with another peak LR, written beside the runs."""
    with open(os.path.join(ROOT, DS)) as f:
        cfg = json.load(f)
    cfg["optimizer"]["params"]["lr"] = lr
    path = os.path.join(ROOT, "runs", "bench-cls-lora-ds.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def sizes(runs: dict[str, str]) -> None:
    """Trainable parameters (the saved module: a LoRA checkpoint holds only those), optimizer shard
    (fp32 master + Adam moments) and checkpoint directory of each run's last checkpoint."""
    import glob

    import torch

    def total(paths) -> int:
        return sum(os.path.getsize(p) for p in paths)

    print("| run | trainable params | optimizer shard | checkpoint dir |")
    print("|---|---|---|---|")
    for name, run_dir in runs.items():
        ckpt = sorted(glob.glob(os.path.join(ROOT, run_dir, "checkpoints", "iter_*")))[-1]
        module = torch.load(glob.glob(os.path.join(ckpt, "*model_states.pt"))[0], weights_only=False)["module"]
        trainable = sum(v.numel() for k, v in module.items() if torch.is_tensor(v) and not k.endswith("_extra_state"))
        files = [os.path.join(d, n) for d, _, names in os.walk(ckpt) for n in names]
        print(f"| {name} | {trainable:,} | {total(glob.glob(os.path.join(ckpt, '*optim_states.pt'))) / 2**20:.2f} MiB "
              f"| {total(files) / 2**20:.2f} MiB |")


if __name__ == "__main__":
    main()
