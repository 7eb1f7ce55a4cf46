"""Chat with a fine-tuned model (a gpt_sft run): a conversation on stdin and stdout.

    python -m mtds.chat --load SFT_RUN_DIR [--tag iter_0000040] [--system "You write Python."] \\
        [--template auto|default|hf] [--max-new-tokens 256] [--temperature 0.8 --top-k 50 | --greedy]

Each line read from stdin is a user turn (a terminal or a pipe: `printf 'hi\\nmore\\n' | python -m
mtds.chat ...`); the answer is printed on one or more lines after it. The conversation so far
(the system prompt, every user turn and every answer) is the next prompt, framed by the chat
template data_tools.sft used (data_tools.chat_format). When it would leave no room for an answer
within the model's max_position_embeddings, the oldest turns are dropped (the system prompt stays),
with a note on stderr. `/reset` starts a new conversation; end of input exits 0.

Generation is mtds.generate's (the same sampling flags, the KV cache, --no-kv-cache); the turn
number is added to --seed, so a piped conversation is reproducible. One plain process, CPU by default.
"""

from __future__ import annotations

import argparse
import sys

from mtds.generate import add_sampling_args, causal_task, chat_encoder, check_args, generate, sampling_kwargs
from mtds.load_trained import load_trained
from mtds.tool_cli import run_tool

RESET = "/reset"


class Conversation:
    """The messages so far, and the prompt ids they make with `encoder` (a data_tools.chat_format
    ChatEncoder) within `max_context` tokens, `reserve` of them kept free for the answer."""

    def __init__(self, encoder, max_context: int, reserve: int, system: str | None = None):
        self.encoder, self.max_context, self.reserve = encoder, max_context, reserve
        self.system = [{"role": "system", "content": system}] if system else []
        self.turns: list[dict] = []  # user, assistant, user, ... (no system message)

    def reset(self) -> None:
        self.turns = []

    def prompt(self, user: str) -> tuple[list[int], int]:
        """(prompt ids, turns dropped) after adding the user turn `user`: the oldest user turns and
        their answers are dropped while the prompt leaves fewer than `reserve` tokens for the answer
        (never the system prompt, never this turn: a turn too long alone is cropped by generate)."""
        self.turns.append({"role": "user", "content": user})
        dropped = 0
        while True:
            ids = self.encoder.prompt_ids(self.system + self.turns)
            if len(ids) + self.reserve <= self.max_context or len(self.turns) == 1:
                return ids, dropped
            self.turns.pop(0)  # the oldest user turn, then what answered it
            while self.turns[0]["role"] != "user":
                self.turns.pop(0)
            dropped += 1

    def answer(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtds.chat", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory a gpt_sft run wrote")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    p.add_argument("--system", help="system prompt, the first message of every conversation")
    p.add_argument("--template", choices=("auto", "default", "hf"), default="auto",
                   help="the chat template data_tools.sft --template used")
    add_sampling_args(p)
    p.set_defaults(max_new_tokens=256)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    check_args(a)
    run = load_trained(a.load, a.tag, a.device)
    task = causal_task(run)
    tok, encoder = run.tokenizer(), chat_encoder(run, a.template)
    max_context = run.cfg.model.max_position_embeddings
    conversation = Conversation(encoder, max_context, min(a.max_new_tokens, max_context // 2), a.system)
    stop_ids = (encoder.eos, tok.eod)  # the end-of-turn token ends the answer
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {run.ckpt_dir}: a line is a turn; {RESET} starts over; Ctrl-D ends", file=sys.stderr)
    for turn, line in enumerate(_lines(interactive)):
        text = line.rstrip("\r\n")
        if text.strip() == RESET:
            conversation.reset()
            print("(new conversation)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        ids, dropped = conversation.prompt(text)
        if dropped:
            print(f"note: the oldest {dropped} turn(s) dropped to fit {max_context} tokens", file=sys.stderr)
        new = generate(run.model, ids, max_context=max_context, vocab_limit=tok.vocab_size, seed=a.seed + turn,
                       stop_ids=stop_ids, **sampling_kwargs(a, task, tok))
        answer = tok.detokenize([t for t in new if t not in stop_ids])
        conversation.answer(answer)
        print(answer, flush=True)
    return 0


def _lines(interactive: bool):
    """stdin's lines, with a prompt on stderr at a terminal; stops at end of input."""
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line


if __name__ == "__main__":
    sys.exit(run_tool(main))
