"""Loss and perplexity of a trained checkpoint on a Megatron `.bin/.idx` dataset.

    python -m mtds.evaluate --load RUN_DIR [--data PREFIX ...] [--split valid|test|all] \\
        [--eval-iters N] [--micro-batch B] [--tag iter_0000040] [--json]

Uses the training loop's own code path: the same dataset builder (the run's task's
build_datasets, with the run's split, seed and sequence length), the same fixed evaluation batches
(mtds.data.loader.fixed_eval_batches) and the same forward step (the task's forward_step). With the
defaults (the run's data, --split valid, the run's eval_iters x data-parallel size micro-batches of the
run's micro-batch size) it reproduces the `val/loss` the training run logged for the same weights
(exactly for fp32 runs; bf16 runs evaluated their bf16 weights, this tool uses the fp32 master copy).

A task with a `report` function (classification) computes its metrics over all the evaluated
samples at once instead (exact macro-F1, where training logs the mean of per-micro-batch values)
and prints a per-class table below the summary line.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys

import torch

from mtds.errors import LoadError
from mtds.load_trained import default_device, load_trained
from mtds.tool_cli import run_tool

SPLITS = {"valid": 1, "test": 2, "all": 0}


def eval_config(cfg, run_dir: str, prefixes: list[str] | None, split: str):
    """The run config for building the evaluation dataset: other data, whole-dataset split, index cache."""
    data = cfg.data
    if prefixes:  # split as the run split its own data, whatever its validation set was
        data = dataclasses.replace(data, paths=list(prefixes), weights=None, valid_paths=[])
    if split == "all":  # every document in one split, read in the dataset's shuffled order
        data = dataclasses.replace(data, split="1,0,0")
    if data.cache_dir is None or not os.path.isdir(data.cache_dir):
        # The saved run_dir may be relative to where training ran; cache next to this run.
        data = dataclasses.replace(data, cache_dir=os.path.join(run_dir, "index_cache"))
    return dataclasses.replace(cfg, data=data)


def check_split_not_empty(prefixes: list[str], split: str, which: str) -> None:
    """Refuse a split with no documents: megatron-core's GPTDataset would loop forever on it."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    bounds = convert_split_vector_to_split_matrix(parse_and_normalize_split(split.replace("/", ",")))[SPLITS[which]]
    start, end = bounds or (0.0, 0.0)  # the builder's own [start, end) fractions of the documents
    for prefix in prefixes:
        docs = len(IndexedDataset(prefix).document_indices) - 1
        if int(round(end * docs)) - int(round(start * docs)) < 1:
            raise LoadError(f"{prefix}: the {which} split of {docs} documents under split {split!r} is empty; "
                            "use --split all")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, forward, count_targets, device, progress: bool = True) -> dict[str, float]:
    """Loss (and extra metrics) per target over the loader's micro-batches, exactly as Trainer.evaluate."""
    from tqdm import tqdm

    from mtds.train.reduction import evaluation_means

    batches = tqdm(loader, desc="evaluate", unit="batch", disable=not progress, file=sys.stderr)
    loss, extra, count = evaluation_means(model, batches, forward, count_targets, device, None)
    if count == 0:
        raise LoadError("the evaluation split has no full micro-batch; lower --micro-batch or use --split all")
    loss = loss.item()
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "batches": count,
            **{k: v.item() for k, v in extra.items()}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtds.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory a training run wrote")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    p.add_argument("--data", nargs="+", metavar="PREFIX",
                   help="dataset prefix(es) without .bin/.idx, tokenized with the run's tokenizer "
                        "(default: the run's own training data)")
    p.add_argument("--split", choices=tuple(SPLITS), default="valid",
                   help="which part of the data (the run's train/valid/test split string); all = every document")
    p.add_argument("--eval-iters", type=int,
                   help="micro-batches to evaluate (default: the run's eval_iters x data-parallel size)")
    p.add_argument("--micro-batch", type=int, help="samples per micro-batch (default: the run's)")
    p.add_argument("--device", default=default_device())
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from mtds.data.loader import fixed_eval_batches
    from mtds.data.sources import DataSources, check_prefix

    for name in ("eval_iters", "micro_batch"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise LoadError(f"--{name.replace('_', '-')} must be >= 1")
    for prefix in a.data or []:  # before loading anything
        check_prefix(prefix, "--data")
    run = load_trained(a.load, a.tag, a.device)
    saved = run.saved
    cfg = eval_config(run.cfg, a.load, a.data, a.split)
    micro = a.micro_batch or saved["deepspeed"]["train_micro_batch_size_per_gpu"]
    # Training validated eval_iters micro-batches per data-parallel rank; tensor-parallel ranks of one
    # replica read the same ones (runs saved before "parallel" was recorded were data-parallel only).
    data_parallel = int(saved.get("parallel", {}).get("data", saved.get("world_size", 1)))
    iters = a.eval_iters or cfg.training.eval_iters * data_parallel
    n = iters * micro
    own = saved["data_sources"]
    sources = DataSources(cfg.data.paths or own["prefixes"], cfg.data.weights if cfg.data.paths else own["weights"],
                          run.tokenizer_model, None if a.data else own.get("valid_prefixes"), run.tokenizer_type)
    for prefix in sources.all_prefixes:
        check_prefix(prefix, "--data")
    if sources.valid_prefixes and a.split != "valid":
        raise LoadError(f"the run validated on its own data.valid_paths and has no {a.split!r} split of its training "
                        "data; give --data PREFIX to evaluate other data")
    if not sources.valid_prefixes:
        check_split_not_empty(sources.prefixes, cfg.data.split, a.split)
    shown = sources.valid_prefixes or sources.prefixes  # what is read
    # Only the asked-for split is read, but the builder builds every split: the others get one sample.
    want = SPLITS[a.split]
    sizes = [n if i == want else 1 for i in range(3)]
    task = cfg.kind.task
    datasets = task.build_datasets(cfg, sources, run.tokenizer(), sizes, 1)
    dataset = datasets[SPLITS[a.split]]
    if dataset is None or len(dataset) == 0:
        raise LoadError(f"split {a.split!r} of {' '.join(shown)} is empty (split string "
                        f"{cfg.data.split!r}); try --split all")
    loader = fixed_eval_batches(dataset, iters, micro, 0, 1)
    report, table = task.report, []
    if report is not None:  # the task's own metrics over all samples at once, and its table
        result, table = report(run.model, loader, torch.device(a.device), cfg.task)
        if not result:
            raise LoadError("the evaluation split has no full micro-batch; lower --micro-batch or use --split all")
    else:
        forward = functools.partial(task.forward_step, opts=cfg.task)
        count = functools.partial(task.count_targets, opts=cfg.task)
        result = evaluate(run.model, loader, forward, count, torch.device(a.device), progress=not a.no_progress)
    result.update(split=a.split, samples=result["batches"] * micro, tokens=result["batches"] * micro * cfg.seq_length,
                  checkpoint=run.ckpt_dir, data=shown)
    if a.json:
        print(json.dumps(result))
    else:
        extra = "".join(f" | {k} {v:.4f}" for k, v in result.items() if k not in (
            "loss", "ppl", "batches", "split", "samples", "tokens", "checkpoint", "data", "per_class"))
        ppl = f" | ppl {result['ppl']:.2f}" if "ppl" in result else ""
        print(f"{run.ckpt_dir} on {' '.join(shown)} ({a.split}, {result['batches']} batches x {micro} "
              f"samples x {cfg.seq_length} tokens): loss {result['loss']:.4f}{ppl}{extra}")
        for line in table:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
