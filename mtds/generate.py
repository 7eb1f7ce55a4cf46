"""Sample text from a trained checkpoint of a kind whose task generates (GPT: causal_lm).

    python -m mtds.generate --load RUN_DIR [--tag iter_0000040] --prompt "def main(" \\
        [--max-new-tokens 64] [--temperature 0.8 --top-k 50 --top-p 0.95 | --greedy] [--seed 1234]
    python -m mtds.generate --load SFT_RUN_DIR --chat --prompt "What does json.dumps do?" [--template auto]

Runs in one plain process (CPU by default; no DeepSpeed engine or launcher). A GPT keeps a KV
cache (mtds.kv_cache, megatron-core's static inference context): the prompt runs once, then each
new token alone. `--no-kv-cache` re-runs the whole context for each token instead (the training
forward; the same tokens, tests/test_generate_kv_cache.py). Once the sequence outgrows the
model's max_position_embeddings the context is cropped to the last max_position_embeddings tokens
and recomputed per token, cache or not. T5 always recomputes its decoder. Sampling is deterministic
for a given --seed.

For an encoder-decoder (T5) the prompt marks gaps with sentinels and the output is the prompt
with the gaps filled: `--prompt "import <extra_id_0> as np"`.

--chat renders the prompt as one user turn plus the start of the assistant's turn with the chat
template data_tools.sft uses (data_tools.chat_format: the default plain-text one, or a Hugging Face
tokenizer's chat_template), prints only the answer and stops at the end-of-turn token. For a
conversation (history, a system prompt): `python -m mtds.chat`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mtds.errors import LoadError
from mtds.load_trained import default_device, load_trained
from mtds.tool_cli import run_tool


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf. logits: [b, V]."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [b, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass, so the
        # most likely token always survives.
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, *, greedy: bool, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of logits [b, V] -> [b]."""
    if greedy or temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: torch.nn.Module, prompt_ids: list[int], *, max_new_tokens: int, max_context: int,
             vocab_limit: int, greedy: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 1234, stop_ids: tuple[int, ...] = (), logits_fn=None, cache_fn=None) -> list[int]:
    """Continue `prompt_ids` by up to `max_new_tokens` ids; returns only the new ids.

    `logits_fn(model, context [1, s]) -> [1, s, V]` is the task's `next_token_logits`
    (default: causal_lm's, the GPT forward): the whole (cropped) context per token.
    `cache_fn(model, max_length)` is the task's `cached_logits` (a KV cache, mtds.kv_cache), or None
    to recompute. With a cache, the prompt runs once and each new token alone, for as long as the
    sequence fits the model's `max_context`; past that the window slides, every position changes,
    and generation falls back to recomputing the cropped context per token (what it would have
    been without a cache: the result is the same either way).

    `vocab_limit` is the tokenizer's size: the model's vocabulary is padded beyond it and those
    ids are never sampled. Generation stops after any id in `stop_ids`.
    """
    if logits_fn is None:
        from mtds.tasks.causal_lm import next_token_logits as logits_fn
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # [1, s]
    # The last new token is never fed back, so the cache needs prompt + max_new_tokens - 1 places.
    cache_len = min(max_context, len(prompt_ids) + max_new_tokens - 1)
    cache = cache_fn(model, cache_len) if cache_fn is not None and 0 < len(prompt_ids) <= cache_len else None
    new: list[int] = []
    for _ in range(max_new_tokens):
        if cache is not None and ids.size(1) <= cache.max_length:
            last = cache(ids[:, cache.length:])[:, :vocab_limit].float()  # prompt first, then one id a step
        else:
            cache = None  # (past max_context: recompute from here on)
            context = ids[:, -max_context:]
            last = logits_fn(model, context)[:, -1, :vocab_limit].float()  # [1, s, V_padded] -> [1, V]
        token = next_token(last, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                           generator=generator)
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
        new.append(int(token))
        if new[-1] in stop_ids:
            break
    return new


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The flags of how to generate, shared with mtds.chat."""
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-kv-cache", action="store_true",
                   help="re-run the whole context for each new token (the same tokens, slower)")
    p.add_argument("--device", default=default_device())


def sampling_kwargs(a: argparse.Namespace, task, tokenizer) -> dict:
    """generate()'s keyword arguments for the flags of add_sampling_args and the run's task (its
    next_token_logits given the run's tokenizer)."""
    import functools

    return dict(max_new_tokens=a.max_new_tokens, greedy=a.greedy, temperature=a.temperature, top_k=a.top_k,
                top_p=a.top_p, logits_fn=functools.partial(task.next_token_logits, tokenizer=tokenizer),
                cache_fn=None if a.no_kv_cache else task.cached_logits)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtds.generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory a training run wrote")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    p.add_argument("--prompt", default="", help="text to continue; empty: start a new document")
    add_sampling_args(p)
    p.add_argument("--num-samples", type=int, default=1, help="independent samples (seeds seed, seed+1, ...)")
    p.add_argument("--no-stop", action="store_true", help="do not stop at the end-of-document token")
    p.add_argument("--chat", action="store_true",
                   help="the prompt is a user turn of the chat template (a gpt_sft run); print the answer "
                        "(a conversation: python -m mtds.chat)")
    p.add_argument("--template", choices=("auto", "default", "hf"), default="auto",
                   help="with --chat: the template data_tools.sft --template used")
    return p


def check_args(a: argparse.Namespace) -> None:
    problems = []
    if a.max_new_tokens < 1:
        problems.append("--max-new-tokens must be >= 1")
    if a.temperature < 0:
        problems.append("--temperature must be >= 0")
    if a.top_k < 0:
        problems.append("--top-k must be >= 0")
    if not 0 < a.top_p <= 1:
        problems.append("--top-p must be in (0, 1]")
    if getattr(a, "num_samples", 1) < 1:
        problems.append("--num-samples must be >= 1")
    if problems:
        raise LoadError("; ".join(problems))


def causal_task(run):
    """The run's task, checked to generate token by token (a one-line LoadError otherwise)."""
    task = run.cfg.kind.task
    if task.next_token_logits is None:
        raise LoadError(f"{run.ckpt_dir}: generation needs a causal model; model_type={run.cfg.model.model_type!r} "
                        "trains a task that does not generate")
    return task


def chat_encoder(run, template: str):
    """data_tools.chat_format's encoder for the run's tokenizer and `template` (LoadError if it cannot)."""
    from data_tools.chat_format import ChatEncoder, ChatError

    tok = run.tokenizer()
    try:
        return ChatEncoder(tok.model_path, tok.tokenizer_type, template)
    except ChatError as e:
        raise LoadError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    check_args(a)
    run = load_trained(a.load, a.tag, a.device)
    task = run.cfg.kind.task
    if task.seq2seq_logits is not None:
        return fill_spans(run, a)
    causal_task(run)
    tok = run.tokenizer()
    # No prompt: what follows a document's end in the data, EOD then whatever the tokenizer starts a
    # text with (a Hugging Face tokenizer's BOS; nothing for sentencepiece).
    prompt_ids = tok.tokenize(a.prompt) if a.prompt else [tok.eod, *tok.tokenize("")]
    stop_ids, shown = (tok.eod,), a.prompt
    if a.chat:
        chat = chat_encoder(run, a.template)
        prompt_ids = chat.prompt_ids([{"role": "user", "content": a.prompt}])
        stop_ids, shown = (chat.eos, tok.eod), ""  # the end-of-turn token ends the answer
    max_context = run.cfg.model.max_position_embeddings
    if len(prompt_ids) > max_context:
        print(f"note: prompt has {len(prompt_ids)} tokens; the model sees the last {max_context}", file=sys.stderr)
    for i in range(a.num_samples):
        new = generate(run.model, prompt_ids, max_context=max_context, vocab_limit=tok.vocab_size,
                       seed=a.seed + i, stop_ids=() if a.no_stop else stop_ids, **sampling_kwargs(a, task, tok))
        if i:
            print("-" * 40)
        print(shown + tok.detokenize([t for t in new if t not in stop_ids]), flush=True)
    return 0


def fill_spans(run, a: argparse.Namespace) -> int:
    """An encoder-decoder (T5): the prompt, with its gaps marked <extra_id_0>, <extra_id_1>, ..., is
    the encoder's input; the decoder starts from <s> and writes each sentinel and its span, up to
    </s>; printed is the prompt with every gap filled."""
    from data_tools.spm import sentinel_piece

    task, tok = run.cfg.kind.task, run.tokenizer()
    if sentinel_piece(0) not in a.prompt:
        raise LoadError(f"--prompt: a {run.cfg.model.model_type} model fills gaps; mark them {sentinel_piece(0)}, "
                        f"{sentinel_piece(1)}, ... (e.g. --prompt 'import {sentinel_piece(0)} as np')")
    encoder_ids = tok.tokenize(a.prompt)
    max_context = run.cfg.model.max_position_embeddings
    if len(encoder_ids) > max_context:
        print(f"note: prompt has {len(encoder_ids)} tokens; the model sees the first {max_context}", file=sys.stderr)
        encoder_ids = encoder_ids[:max_context]
    device = next(run.model.parameters()).device
    encoder = torch.tensor([encoder_ids], dtype=torch.long, device=device)  # [1, s_enc]

    def logits_fn(model, decoder_ids):  # decoder ids [1, s_dec] -> [1, s_dec, V]
        return task.seq2seq_logits(model, encoder, decoder_ids)

    for i in range(a.num_samples):
        new = generate(run.model, [tok.bos], max_new_tokens=a.max_new_tokens, max_context=max_context,
                       vocab_limit=tok.vocab_size, greedy=a.greedy, temperature=a.temperature, top_k=a.top_k,
                       top_p=a.top_p, seed=a.seed + i, stop_ids=() if a.no_stop else (tok.eos,), logits_fn=logits_fn)
        if i:
            print("-" * 40)
        print(task.render_generation(a.prompt, new, tok), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
