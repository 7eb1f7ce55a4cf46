"""BERT classification fine-tuning curve on the embedded default corpus (no download): code vs prose.

    python bench/finetune_classification.py [--pretrain-iters 300] [--finetune-iters 300] [--scratch]

Steps, each the real command (run from the repository root, one process at a time):
1. pretrain bert-tiny (MLM + SOP) on the default corpus (`data/stdlib`, sentence-split on first
   use) into runs/bench-bert-tiny (skipped if it already has a checkpoint);
2. `data_tools.cls_corpus` + `data_tools.classify` -> data/code_prose_cls_document;
3. fine-tune `bert_cls` from it (`training.init_from`), saving every `--save-every` steps;
4. `mtds.evaluate --json --tag ...` on every checkpoint: exact accuracy and macro-F1 over the
   same validation samples (the first --eval-iters x 16 of the 10% validation split), and the
   majority-class accuracy of those samples; then the per-class table of the last checkpoint.
`--scratch` also fine-tunes the same model from random weights, for comparison.
Prints a markdown table for bench/RESULTS.md.
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


def finetune(run_dir: str, a, init_from: str | None) -> list[dict]:
    prefix = "data/code_prose_cls_document"
    log = run([PY, "mtds/pretrain.py", "--deepspeed_config", DS, "--model-type", "bert_cls", "--model.preset=bert-tiny",
               "--data.paths", prefix, "--data.tokenizer_model", "data/stdlib/tokenizer.model", "--data.split=90,10,0",
               "--run-dir", run_dir, f"--training.train_iters={a.finetune_iters}",
               f"--training.save_interval={a.save_every}", f"--training.keep_last={a.finetune_iters // a.save_every}",
               f"--training.eval_interval={a.save_every}", f"--training.eval_iters={a.eval_iters}",
               "--training.progress_bar=false", *(["--training.init_from", init_from] if init_from else [])])
    print("\n".join(line for line in log.splitlines() if line.startswith(("note:", "initialised", "model:"))),
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
    if a.scratch:
        curves["from scratch"] = finetune("runs/bench-cls-scratch", a, None)
    print("| start | step | val acc | val macro-F1 | val loss | majority-class acc |")
    print("|---|---|---|---|---|---|")
    for name, rows in curves.items():
        for r in rows:
            print(f"| {name} | {r['step']} | {r['acc']:.4f} | {r['macro_f1']:.4f} | {r['loss']:.4f} | {r['majority_acc']:.4f} |")
    print(run([PY, "-m", "mtds.evaluate", "--load", "runs/bench-cls", "--no-progress", "--eval-iters=1000"]))


if __name__ == "__main__":
    main()
