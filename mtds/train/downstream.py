"""Downstream evals in the training loop (training.downstream_evals): eval packs (data_tools.eval_pack)
scored every downstream_interval steps, with exact global counts at any world size.

Each example is the log-likelihood of each choice's continuation given the context, summed over
its tokens (the model's log-softmax over its padded vocabulary, the context left-truncated to
seq_length as lm-eval truncates). Per task:
  acc       the argmax of the summed log-likelihoods is the gold choice (a cloze pack, one choice:
            the continuation is the greedy one, lm-eval's `acc` of LAMBADA)
  acc_norm  the argmax of log-likelihood / len(choice) in characters, lm-eval's acc_norm (multiple choice)
  bpb       bits per UTF-8 byte of the gold continuations: -sum(log-lik) / ln 2 / sum(bytes)
with the standard error of acc and acc_norm, sqrt(p (1 - p) / (n - 1)), as lm-eval reports it.

Exact counts: data-parallel rank r scores examples r, r + D, r + 2D, ... (every example once at any
world size D, uneven splits included), and the sums are all-reduced in float64. Every rank runs
the same number of forwards, ceil(n / D): a rank past the end scores example 0 again and drops it,
since a forward is a collective under ZeRO-3 (its parameter gathers) and an uneven count would hang.
Written by hand because megatron-core and DeepSpeed have no multiple-choice scorer; the scalars go
through the run's Metrics (TensorBoard, W&B where enabled).
"""

from __future__ import annotations

import json
import math
import os

from mtds.errors import ConfigError

METRICS = ("acc", "acc_norm", "bpb")


def check_plan(cfg, scores_continuations: bool, tensor: int) -> None:
    """Refusals before DeepSpeed starts: a kind that cannot score continuations (its task has no
    continuation_logits), tensor parallelism, a pack file that is not there."""
    t = cfg.training
    if not t.downstream_evals:
        return
    if not scores_continuations:
        raise ConfigError(f"training.downstream_evals: model.model_type={cfg.model.model_type!r} is not a causal "
                          "(GPT) kind, whose continuations downstream evals score; drop downstream_evals or use gpt")
    if tensor > 1:
        raise ConfigError(f"training.downstream_evals with model.tensor_model_parallel_size={tensor}: the scorer reads "
                          "whole-vocabulary logits and does not gather vocab-parallel shards; score with TP 1")
    for path in t.downstream_evals:
        if not os.path.isfile(path):
            raise ConfigError(f"training.downstream_evals: {path}: eval pack not found "
                              "(build one with `python -m data_tools.eval_pack`)")


def load_packs(cfg, tokenizer_model: str) -> list[dict]:
    """The run's packs, checked: sound (content hash), of this run's tokenizer, names distinct,
    every continuation within seq_length."""
    from data_tools.errors import DataToolsError
    from data_tools.eval_pack import read_pack, tokenizer_hash

    packs, names = [], set()
    ours = tokenizer_hash(tokenizer_model)
    for path in cfg.training.downstream_evals:
        try:
            pack = read_pack(path)
        except DataToolsError as e:
            raise ConfigError(f"training.downstream_evals: {e}") from None
        if pack["tokenizer"]["xxh3_128"] != ours:
            raise ConfigError(f"training.downstream_evals: {path} was built with another tokenizer "
                              f"({pack['tokenizer']['path']}, xxh3-128 {pack['tokenizer']['xxh3_128'][:12]}) than "
                              f"this run's {tokenizer_model} ({ours[:12]}); rebuild it with --tokenizer-model "
                              f"{tokenizer_model}")
        if pack["task"] in names:
            raise ConfigError(f"training.downstream_evals: two packs of task {pack['task']!r}; "
                              "rebuild one with another --name")
        names.add(pack["task"])
        longest = max(len(c) for e in pack["examples"] for c in e["continuations"])
        if longest > cfg.seq_length:
            raise ConfigError(f"training.downstream_evals: {path} has a continuation of {longest} tokens, longer "
                              f"than data.seq_length={cfg.seq_length}")
        pack["path"] = path
        packs.append(pack)
    return packs


def continuation_logliks(logits_fn, model, example: dict, seq_length: int, device):
    """([summed log-likelihood of each continuation], [is each the greedy continuation]) of one example:
    all its choices in one forward, right-padded (a causal model's earlier rows do not see the padding)."""
    import torch

    rows = [(example["context"] + c)[-(seq_length + 1):] for c in example["continuations"]]
    width = max(len(r) for r in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        inputs[i, :len(r) - 1] = torch.tensor(r[:-1])
    logprobs = torch.log_softmax(logits_fn(model, inputs.to(device)).float(), dim=-1)
    lls, greedy = [], []
    for i, (r, cont) in enumerate(zip(rows, example["continuations"])):
        m = len(cont)
        lp = logprobs[i, len(r) - 1 - m:len(r) - 1]  # row t predicts token t + 1
        target = torch.tensor(r[-m:], device=lp.device)
        lls.append(float(lp.gather(1, target[:, None]).double().sum()))
        greedy.append(bool((lp.argmax(-1) == target).all()))
    return lls, greedy


def example_outcome(example: dict, lls: list[float], greedy: list[bool]) -> tuple[float, float, float, float]:
    """(acc hit, acc_norm hit, nll of the gold continuation in nats, its bytes) of one scored example."""
    gold = example["gold"]
    if len(lls) == 1:  # cloze: acc is the greedy match
        hit, norm_hit = float(greedy[0]), float(greedy[0])
    else:
        hit = float(max(range(len(lls)), key=lambda j: (lls[j], -j)) == gold)  # first of equal maxima
        normed = [ll / max(n, 1) for ll, n in zip(lls, example["chars"])]
        norm_hit = float(max(range(len(normed)), key=lambda j: (normed[j], -j)) == gold)
    return hit, norm_hit, -lls[gold], float(example["bytes"][gold])


def score_pack(logits_fn, model, pack: dict, seq_length: int, rank: int, size: int, group, device) -> dict:
    """One pack's metrics over all its examples, the same on every data-parallel rank (see the module doc)."""
    import torch

    examples = pack["examples"]
    n = len(examples)
    sums = torch.zeros(5, dtype=torch.float64)  # examples, acc hits, acc_norm hits, gold nll (nats), gold bytes
    for k in range(-(-n // size)):
        i = k * size + rank
        lls, greedy = continuation_logliks(logits_fn, model, examples[i if i < n else 0], seq_length, device)
        if i < n:
            sums += torch.tensor([1.0, *example_outcome(examples[i], lls, greedy)], dtype=torch.float64)
    if torch.distributed.is_initialized() and size > 1:
        sums = sums.to(device)
        torch.distributed.all_reduce(sums, group=group)
    count, hits, norm_hits, nll, nbytes = sums.tolist()
    out = {"n": int(count), "acc": hits / count, "acc_stderr": stderr(hits / count, count)}
    if pack["layout"] != "cloze":
        out.update(acc_norm=norm_hits / count, acc_norm_stderr=stderr(norm_hits / count, count))
    out.update(bpb=nll / math.log(2) / nbytes, pack_xxh3_128=pack["xxh3_128"])
    return out


def stderr(p: float, n: float) -> float | None:
    """Standard error of a mean of n 0/1 outcomes, sqrt(p (1 - p) / (n - 1)) (lm-eval's, sample variance);
    None for one example (JSON has no NaN)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


class Downstream:
    """The run's packs and where their scores go; `run` is called by the trainer on every rank."""

    def __init__(self, cfg, packs: list[dict], logits_fn):
        self.packs, self.logits_fn = packs, logits_fn
        self.interval = cfg.training.downstream_interval or cfg.training.eval_interval
        self.seq_length, self.run_dir = cfg.seq_length, cfg.training.run_dir

    def due(self, iteration: int, last: int) -> bool:
        return iteration % self.interval == 0 or iteration == last

    def run(self, engine, iteration: int, tokens: int, rank: int, dp_rank: int, dp_size: int, group,
            metrics, resolved: dict) -> dict:
        """Score every pack; log, write RUN_DIR/downstream.json (rank 0) and put the scores in `resolved`
        (the record each later checkpoint saves). Returns {task: metrics}."""
        import torch

        engine.eval()
        try:
            with torch.no_grad():
                tasks = {p["task"]: score_pack(self.logits_fn, engine, p, self.seq_length, dp_rank, dp_size, group,
                                               engine.device) for p in self.packs}
        finally:
            engine.train()
        record = {"iteration": iteration, "consumed_tokens": tokens, "tasks": tasks}
        resolved["downstream"] = record
        values = {f"downstream/{t}/{m}": r[m] for t, r in tasks.items() for m in METRICS if m in r}
        metrics.scalars(values, iteration, tokens)  # also downstream_vs_tokens/*, for mtds.plot
        for t, r in tasks.items():
            errs = {m: "n/a" if r[m + "_stderr"] is None else f"{r[m + '_stderr']:.4f}" for m in ("acc", "acc_norm")
                    if m in r}
            shown = "".join(f" | {m} {r[m]:.4f} ± {e}" for m, e in errs.items())
            metrics.print(f"downstream at iter {iteration} | {t} (n {r['n']}){shown} | bpb {r['bpb']:.4f}")
        if rank == 0:
            path = os.path.join(self.run_dir, "downstream.json")
            with open(path + ".tmp", "w") as f:
                json.dump(record, f, indent=2)
            os.replace(path + ".tmp", path)
        return tasks
