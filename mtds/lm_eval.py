"""Evaluate a trained run with lm-evaluation-harness: an `lm_eval.api.model.LM` for an mtds run dir,
and the command that runs lm-eval's evaluator on it and prints lm-eval's own table.

    python -m mtds.lm_eval --load runs/gpt --tasks hellaswag,arc_easy [--include-path my_tasks/] [--limit 100]

lm-eval has no plugin hook for its `--model` flag, so an outside model is handed to
`lm_eval.simple_evaluate` as an object (`MtdsLM`). Tasks are lm-eval's (its registry, or YAML files
under `--include-path`, e.g. a `dataset_path: json` task over local files: no network). lm-eval is an
optional extra: `pip install 'mtds-pretrain[eval]'`.

The adapter scores exactly as the in-loop downstream evals do (mtds/train/downstream.py), so an
lm-eval task over the same data gives the in-loop acc / acc_norm (tests/test_downstream.py): the
pair's ids are data_tools.eval_pack's (lm-eval's HFLM._encode_pair, no special tokens; an empty
context is the end-of-document token), the context left-truncated to the run's seq_length.
  loglikelihood          (summed log-probability of the continuation, is it the greedy one)
  loglikelihood_rolling  a whole text in lm-eval's rolling windows (lm_eval.utils), after end-of-document
  generate_until         greedy decoding (mtds.generate, the task's KV cache), cut at the first stop string
GPT kinds (a task with continuation_logits); one example at a time, in one process.
"""

from __future__ import annotations

import argparse
import sys

from mtds.errors import LoadError

EXTRA = "pip install 'mtds-pretrain[eval]' (lm-evaluation-harness)"


def import_lm_eval():
    """The lm_eval package, or a one-line LoadError naming the extra."""
    try:
        import lm_eval
        import lm_eval.api.model  # noqa: F401
    except ImportError as e:
        raise LoadError(f"mtds.lm_eval needs the lm-eval package ({e.name or e}): {EXTRA}") from None
    return lm_eval


def make_adapter(run, device: str = "cpu"):
    """An lm_eval.api.model.LM over a loaded run (mtds.load_trained.TrainedRun)."""
    lm_eval = import_lm_eval()
    from lm_eval.api.model import LM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from data_tools.eval_pack import encode_pair, load_encoder
    from mtds.train.downstream import continuation_logliks

    task = run.cfg.kind.task
    if task.continuation_logits is None:
        raise LoadError(f"{run.run_dir}: model.model_type={run.cfg.model.model_type!r} is not a causal (GPT) kind; "
                        "lm-eval scores continuations of causal models")
    encode, eod, _ = load_encoder(run.tokenizer_model, run.tokenizer_type)
    seq = run.cfg.seq_length
    logits_fn = task.continuation_logits

    class MtdsLM(LM):
        """An mtds run as lm-eval's model (module doc)."""

        def __init__(self):
            super().__init__()
            self.run, self.tokenizer = run, run.tokenizer()

        def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
            import torch

            with torch.no_grad():
                lls, greedy = continuation_logliks(logits_fn, run.model, {"context": context,
                                                                          "continuations": [continuation]}, seq, device)
            return lls[0], greedy[0]

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return [self._score(*encode_pair(encode, eod, *r.args)) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            out = []
            for r in requests:
                windows = map(make_disjoint_window, get_rolling_token_windows(encode(r.args[0]), eod, seq, 1))
                out.append(sum(self._score(ctx, pred)[0] for ctx, pred in windows))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            from mtds.generate import generate

            out = []
            for r in requests:
                context, kwargs = r.args
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                ids = generate(run.model, encode(context) or [eod], max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                               max_context=seq, vocab_limit=self.tokenizer.vocab_size, greedy=True, stop_ids=(eod,),
                               logits_fn=task.next_token_logits, cache_fn=task.cached_logits)
                text = self.tokenizer.detokenize([i for i in ids if i != eod])
                for stop in until:
                    text = text.split(stop)[0]
                out.append(text)
            return out

    del lm_eval
    return MtdsLM()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtds.lm_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory a training run wrote")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated")
    p.add_argument("--include-path", help="a folder of lm-eval task YAML files (local tasks)")
    p.add_argument("--limit", type=float, help="examples per task (lm-eval's --limit: a count, or a fraction < 1)")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print lm-eval's results dict as JSON instead of its table")
    return p


def evaluate(run_dir: str, tasks: list[str], include_path: str | None = None, limit: float | None = None,
             tag: str | None = None, device: str = "cpu", num_fewshot: int | None = None,
             log_samples: bool = False) -> dict:
    """lm-eval's `simple_evaluate` results for an mtds run (with `log_samples`, lm-eval's per-example
    records too: `results["samples"][task]`, each choice's log-likelihood in `resps`)."""
    lm_eval = import_lm_eval()
    from lm_eval.tasks import TaskManager

    from mtds.load_trained import load_trained

    # Indexing lm-eval's own registry reads ~14,000 YAML files (seconds): skipped when --include-path has every task.
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include_path)
    unknown = sorted(set(tasks) - set(manager.all_tasks))
    if unknown:
        raise LoadError(f"--tasks: lm-eval knows no task {', '.join(unknown)}"
                        + ("" if include_path else " (a local YAML task: give its folder with --include-path)"))
    run = load_trained(run_dir, tag, device)
    return lm_eval.simple_evaluate(model=make_adapter(run, device), tasks=tasks, num_fewshot=num_fewshot,
                                   task_manager=manager, limit=limit, log_samples=log_samples, bootstrap_iters=0)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    import_lm_eval()  # the missing extra before any model is loaded
    results = evaluate(a.load, [t for t in a.tasks.split(",") if t], a.include_path, a.limit, a.tag, a.device,
                       a.num_fewshot)
    if a.json:
        import json

        print(json.dumps(results["results"], indent=2, default=str))
    else:
        from lm_eval.utils import make_table

        print(make_table(results))
    return 0


if __name__ == "__main__":
    from mtds.tool_cli import run_tool

    sys.exit(run_tool(main))
