"""Generation speed with and without the KV cache (mtds.generate, mtds.kv_cache), on this machine's CPU.

    python bench/generate_kv_cache.py [--preset gpt-tiny] [--max-position 1024] [--vocab 32000] \\
        [--prompts 32,512] [--new-tokens 64] [--repeats 3] [--threads 0]

A randomly initialised GPT of the preset's shape (RoPE, RMSNorm, SwiGLU; fp32, eval mode), built
in-process the way mtds.load_trained builds a trained one. For each prompt length it generates
--new-tokens greedily, with the cache (the prompt once, then one token per forward) and with
--no-kv-cache (the whole context per token), --repeats times each, and prints one table: median
new tokens per second (prompt processing included, as a user waits for it) and the speedup. The
two token sequences must be equal (the script fails otherwise): the cache changes speed only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def build(preset: str, max_position: int, vocab: int) -> torch.nn.Module:
    """A random-weight GPT of `preset`'s shape in fp32 eval mode (needs mtds's world of one)."""
    from mtds.config import build_config
    from mtds.kinds import build_model

    cfg = build_config(overrides={"model": {"preset": preset, "max_position_embeddings": max_position}})
    torch.manual_seed(0)
    return build_model(cfg, vocab, "fp32", on_gpu=False).eval()


def measure(model, prompt_len: int, new_tokens: int, repeats: int, max_context: int, vocab: int) -> dict:
    """{"cached", "recompute"}: median new tokens/s of each; raises if their tokens differ."""
    from mtds.generate import generate
    from mtds.tasks.causal_lm import TASK

    prompt = torch.randint(0, vocab, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    rates, outputs = {}, {}
    for name, cache_fn in (("cached", TASK.cached_logits), ("recompute", None)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            outputs[name] = generate(model, prompt, max_new_tokens=new_tokens, max_context=max_context,
                                     vocab_limit=vocab, greedy=True, logits_fn=TASK.next_token_logits,
                                     cache_fn=cache_fn)
            times.append(time.perf_counter() - t0)
        rates[name] = new_tokens / statistics.median(times)
    if outputs["cached"] != outputs["recompute"]:
        raise SystemExit(f"prompt {prompt_len}: cached and recomputed generations differ")
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt-tiny")
    p.add_argument("--max-position", type=int, default=1024, help="max_position_embeddings")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prompts", default="32,512", help="prompt lengths, comma-separated")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from mtds.load_trained import stdout_to_stderr
    from mtds.parallel.process_groups import init_distributed

    with stdout_to_stderr():
        init_distributed()
        model = build(a.preset, a.max_position, a.vocab)
    params = sum(p.numel() for p in model.parameters())
    print(f"{a.preset} ({params / 1e6:.1f}M parameters, vocab {a.vocab}, max_position_embeddings {a.max_position}), "
          f"fp32, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"{a.new_tokens} new tokens, greedy, median of {a.repeats}")
    print("| prompt tokens | with KV cache (tok/s) | without (tok/s) | speedup |")
    print("|---|---|---|---|")
    for prompt_len in (int(x) for x in a.prompts.split(",")):
        if prompt_len + a.new_tokens > a.max_position:
            raise SystemExit(f"--prompts {prompt_len} + --new-tokens {a.new_tokens} exceed --max-position")
        r = measure(model, prompt_len, a.new_tokens, a.repeats, a.max_position, a.vocab)
        print(f"| {prompt_len} | {r['cached']:.1f} | {r['recompute']:.1f} | {r['cached'] / r['recompute']:.2f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
