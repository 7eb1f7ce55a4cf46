"""What each pretraining objective runs and predicts per sample of the default corpus: the positions the
model processes and the targets its loss averages over (the task's own count_targets), for causal LM (gpt),
permutation LM (gpt_plm), masked LM (bert, no pair head) and span corruption (t5) at one data.seq_length.

    python bench/objective_targets.py [--seq 128] [--samples 400]

Every kind counts data.seq_length tokens per sample as consumed (the x axis of mtds.plot), so runs with the
same batch, seq_length and steps consume the same tokens; this shows how differently many of them each
loss predicts. Builds the default corpus's layouts where missing (as the first training run would).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# kind -> (its [task] options here, the sample keys the model reads as positions, their padding masks)
OBJECTIVES = {
    "gpt": ({}, ("tokens",), ()),
    "gpt_plm": ({}, ("input_ids",), ()),
    "bert": ({"pair": "none"}, ("text",), ("padding_mask",)),
    "t5": ({}, ("text_enc", "text_dec"), ("enc_mask", "dec_mask")),
}


def unpadded(mask: torch.Tensor) -> int:
    """Tokens of a padding mask: [s] with 1 = token, or pairwise [s, s] (its diagonal: a token sees itself)."""
    return int((mask if mask.dim() == 1 else mask.diagonal()).bool().sum())


def count(kind: str, seq: int, samples: int, run_dir: str) -> dict:
    """Mean positions run, of them tokens (not padding), and targets per sample over the first training samples."""
    from mtds.config import build_config
    from mtds.data.sources import resolve_sources
    from mtds.data.tokenizer import load_tokenizer

    options, inputs, masks = OBJECTIVES[kind]
    cfg = build_config({"model": {"model_type": kind}, "task": options, "data": {"seq_length": seq},
                        "training": {"run_dir": run_dir}})
    task = cfg.kind.task
    sources = resolve_sources(cfg, task.data_layout)
    tokenizer = load_tokenizer(sources.tokenizer_model, sources.tokenizer_type)
    task.check_data(cfg, sources, tokenizer)
    train = task.build_datasets(cfg, sources, tokenizer, [samples, samples, samples], 1)[0]
    positions = tokens = targets = 0
    for i in range(samples):
        sample = {k: torch.as_tensor(v) for k, v in train[i].items()}
        batch = {k: v[None] for k, v in sample.items()}  # a micro-batch of one
        targets += int(sum(task.count_targets(batch, cfg.task).values()))
        run = sum(sample[k].numel() for k in inputs)
        positions += run
        tokens += sum(unpadded(sample[k]) for k in masks) if masks else run
    return {"positions": positions / samples, "tokens": tokens / samples, "targets": targets / samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--samples", type=int, default=400)
    a = p.parse_args(argv)

    from megatron.core import parallel_state

    from mtds.cpu_compat import enable_if_no_cuda

    enable_if_no_cuda()
    if not torch.distributed.is_initialized():  # the BERT dataset asks torch.distributed for the rank
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    with tempfile.TemporaryDirectory() as run_dir:
        rows = {kind: count(kind, a.seq, a.samples, run_dir) for kind in OBJECTIVES}
    print(f"default corpus, data.seq_length {a.seq}, mean over the first {a.samples} training samples")
    print("| kind | consumed tokens / sample | positions run | of them tokens (not padding) | targets predicted |"
          " targets / consumed |")
    print("|---|---|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind} | {a.seq} | {r['positions']:.1f} | {r['tokens']:.1f} | {r['targets']:.1f} | "
              f"{r['targets'] / a.seq:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
