"""Cost of one in-loop downstream evaluation (training.downstream_evals) at the default presets, and its
share of a training run at the default interval.

    python bench/bench_downstream.py [--examples 200] [--repeats 3] [--steps 5] [--seq 256]

The model and engine are built as training builds them (mtds.train.engine.build_engine: the kind's
model and deepspeed.initialize; ds_configs/zero2.json resolved as mtds/train/plan.py resolves it, so a
CPU without bf16 instructions trains in fp32; gpt-tiny, the default model of `deepspeed mtds/pretrain.py`),
in this process, world of one. Two packs are built with data_tools.eval_pack and the default corpus's tokenizer from docstrings of
this Python's standard library: multiple choice (4 choices: context = a docstring's first sentence, gold
= its second sentence, distractors = the second sentences of three other docstrings) and cloze (the
first two sentences, the final word the continuation). Each pack is scored with mtds/train/downstream.py's
score_pack, as the trainer's Downstream.run does (engine.eval(), no_grad). A training step is the bare
engine step of bench/loop_overhead.py (forward, backward, step) on a synthetic batch of the same shape.

Prints median seconds per 1,000 examples over --repeats, and the share of a run:
time of one evaluation of a 1,000-example pack / (eval_interval x median seconds per training step),
eval_interval being training.eval_interval's default (downstream_interval's default).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import statistics
import sys
import sysconfig
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

SENTENCE = re.compile(r"(?<=[.!?])\s+")


def docstring_sentences(limit: int, seed: int = 0, root: str | None = None) -> list[list[str]]:
    """First sentences (at least two, 3-40 words each, one line each) of the function and class
    docstrings of the .py files under `root` (default: the standard library), files in sorted order,
    then shuffled with `seed`."""
    root = root or sysconfig.get_paths()["stdlib"]
    out: list[list[str]] = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "site-packages", "idlelib"))
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                text = " ".join(doc.split("\n\n")[0].split())  # the first paragraph, one line
                parts = [s for s in SENTENCE.split(text) if s]
                if len(parts) >= 2 and all(3 <= len(s.split()) <= 40 for s in parts[:2]):
                    out.append(parts[:2])
            if len(out) >= 20 * limit:
                break
    random.Random(seed).shuffle(out)
    return out


def write_inputs(folder: str, n: int, seed: int = 0, root: str | None = None) -> tuple[str, str]:
    """(choices jsonl, cloze jsonl) of n examples each, from distinct docstrings."""
    docs = docstring_sentences(n, seed, root)
    if len(docs) < 2 * n:
        raise SystemExit(f"only {len(docs)} usable docstrings for {n} examples of each pack")
    rng = random.Random(seed)
    mc, cloze = os.path.join(folder, "docstrings_mc.jsonl"), os.path.join(folder, "docstrings_cloze.jsonl")
    with open(mc, "w") as f:
        for i in range(n):
            others = rng.sample([j for j in range(n) if j != i], 3)
            choices = [docs[j][1] for j in others]
            gold = rng.randrange(4)
            choices.insert(gold, docs[i][1])
            f.write(json.dumps({"question": docs[i][0], "choices": choices, "answer": gold}) + "\n")
    with open(cloze, "w") as f:
        for first, second in docs[n:2 * n]:
            f.write(json.dumps({"text": f"{first} {second}"}) + "\n")
    return mc, cloze


def time_pack(engine, logits_fn, pack: dict, seq: int) -> float:
    """Seconds of one scoring of the pack, as Downstream.run scores it at world size 1."""
    from mtds.train.downstream import score_pack

    engine.eval()
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            score_pack(logits_fn, engine, pack, seq, 0, 1, None, engine.device)
            return time.perf_counter() - t0
    finally:
        engine.train()


def build_engine(preset: str, ds_path: str, vocab: int):
    """(engine, precision) as mtds/pretrain.py builds them on this machine, world of one."""
    from mtds.config import build_config
    from mtds.cpu_compat import has_native_bf16
    from mtds.ds_config import load_ds_config, precision, resolve_ds_config
    from mtds.parallel.process_groups import init_distributed
    from mtds.train.engine import build_engine as mtds_build_engine

    quiet = lambda *a, **k: None  # noqa: E731
    gpu = torch.cuda.is_available()
    ds_cfg = resolve_ds_config(load_ds_config(ds_path), ds_path, 1, 100000, gpu, log=quiet,
                               cpu_native_bf16=gpu or has_native_bf16())
    init_distributed()
    cfg = build_config(overrides={"model": {"preset": preset}})
    engine, _, _ = mtds_build_engine(cfg, cfg.kind, ds_cfg, vocab, gpu, log=quiet)
    return engine, precision(ds_cfg), ds_cfg["train_micro_batch_size_per_gpu"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt-tiny")
    p.add_argument("--deepspeed-config", default="ds_configs/zero2.json", help="the training step's config")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--examples", type=int, default=200, help="examples per pack (the figures are per 1,000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed training steps (after 2 warm-ups)")
    p.add_argument("--write-inputs", metavar="DIR", help="only write the two packs' jsonl inputs into DIR")
    p.add_argument("--root", help="docstrings from the .py files under this folder (default: the standard library)")
    a = p.parse_args(argv)
    if a.write_inputs:
        os.makedirs(a.write_inputs, exist_ok=True)
        print("\n".join(write_inputs(a.write_inputs, a.examples, root=a.root)))
        return 0

    from bench.loop_overhead import bare_steps
    from bench.train_throughput import synthetic_batches
    from data_tools.default_dataset import build_default_dataset
    from data_tools.eval_pack import build_pack
    from mtds.config import build_config
    from mtds.tasks.causal_lm import next_token_logits

    tokenizer = build_default_dataset(build_config().data.default_dir, quiet=True)["tokenizer_model"]
    import sentencepiece

    vocab = sentencepiece.SentencePieceProcessor(model_file=tokenizer).vocab_size()
    interval = build_config().training.eval_interval
    with tempfile.TemporaryDirectory() as folder:
        mc_in, cloze_in = write_inputs(folder, a.examples, root=a.root)
        packs = [build_pack([mc_in], tokenizer, "choices", name="docstrings_mc"),
                 build_pack([cloze_in], tokenizer, "cloze", name="docstrings_cloze")]
    engine, prec, micro = build_engine(a.preset, a.deepspeed_config, vocab)
    batch = synthetic_batches(1, micro, a.seq, vocab, engine.device)[0]
    bare_steps(engine, batch, 1)  # warm-up (2 steps)
    step = statistics.median(wall for wall, _ in bare_steps(engine, batch, a.steps))
    for pack in packs:  # warm-up
        time_pack(engine, next_token_logits, {**pack, "examples": pack["examples"][:5]}, a.seq)
    rows = []
    for pack in packs:
        times = [time_pack(engine, next_token_logits, pack, a.seq) for _ in range(a.repeats)]
        per_1k = statistics.median(times) / len(pack["examples"]) * 1000
        ex = pack["examples"]
        tokens = statistics.mean(len(e["context"]) + max(map(len, e["continuations"])) for e in ex)
        rows.append((pack["task"], pack["layout"], len(ex[0]["continuations"]), len(ex), tokens, per_1k,
                     min(times) / len(ex) * 1000))
    threads = torch.get_num_threads()
    print(f"\n{a.preset} {a.deepspeed_config} {prec}, seq {a.seq}, vocab {vocab}, CPU x{threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}; training step (micro {micro}): median {step:.3f} s "
          f"of {a.steps}; eval_interval {interval}; {a.repeats} repeats per pack")
    print("| pack | layout | choices | examples | mean tokens / row | s per 1,000 examples (median) | min "
          f"| share of a run at eval_interval {interval} |")
    print("|---|---|---|---|---|---|---|---|")
    for task, layout, k, n, tokens, med, low in rows:
        share = med / (interval * step)
        print(f"| {task} | {layout} | {k} | {n} | {tokens:.1f} | {med:.2f} | {low:.2f} | {share:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
