"""Tokenize chat / instruction jsonl (or parquet, Arrow) into Megatron `.bin`/`.idx` data for GPT supervised fine-tuning.

    python -m data_tools.sft --input chats.jsonl --output-prefix data/chats --tokenizer-model TOK \\
        --max-length 512 [--tokenizer-type HuggingFaceTokenizer] [--template auto|default|hf]

Each line is `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}` or
`{"prompt": ..., "response": ...}`, rendered by data_tools.chat_format. Writes two pairs, one
document (one sequence) per sample, with identical sequence lengths:

    PREFIX_sft_document.bin/.idx            token ids (give this prefix as data.paths)
    PREFIX_sft_document_loss_mask.bin/.idx  the side file: per token 1 = a training target
                                            (assistant content and its end-of-turn token), 0 = not

Samples longer than --max-length tokens are cut to it; one whose assistant tokens were all cut
away is counted and skipped (never written with an all-zero mask). Any bad line (malformed
JSON, missing keys, no assistant turn, an unknown role, non-string content) stops the run with
one line naming FILE:LINE and nothing is written (temp files, renamed only when complete);
blank lines are skipped. Parquet/Arrow rows (numbered from 0) are read as the same records: a
`messages` column of lists of {role, content} structs, or `prompt` and `response` columns (other
columns are not read). One process: chat sets are small next to pretraining corpora, and
rendering a chat template is Python work per sample anyway.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data_tools.chat_format import TEMPLATES, ChatEncoder, ChatError, messages_of
from data_tools.errors import DataToolsError, run_cli
from data_tools.hf_tokenizer import TOKENIZER_TYPES
from data_tools.inputs import input_bytes, iter_records, load_record, resolve_inputs
from data_tools.io_utils import check_output_prefix
from data_tools.jsonl_reader import UnparsableLine
from data_tools.progress import Progress
from data_tools.spm import TokenizerError


def output_prefixes(output_prefix: str) -> tuple[str, str]:
    """(token prefix, loss-mask prefix) that `sft` writes for `output_prefix`."""
    tokens = f"{output_prefix}_sft_document"
    return tokens, loss_mask_prefix(tokens)


def loss_mask_prefix(tokens_prefix: str) -> str:
    """Where the loss-mask side file of an SFT token prefix lives."""
    return tokens_prefix + "_loss_mask"


@dataclass
class SFTSummary:
    outputs: tuple[str, str] = ("", "")
    samples: int = 0
    tokens: int = 0
    target_tokens: int = 0
    truncated: int = 0  # cut to --max-length, some assistant tokens left: written
    truncated_away: int = 0  # cut to --max-length, no assistant token left: skipped
    blank_lines: int = 0
    template: str = ""
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"sft: {self.samples} samples written, {self.tokens} tokens ({self.target_tokens} loss tokens); "
                f"{self.truncated} truncated to --max-length, {self.truncated_away} skipped (all response tokens "
                f"truncated away), {self.blank_lines} blank lines; template {self.template}; {self.seconds:.1f}s")


def sft_preprocess(input_paths: Sequence[str], output_prefix: str, tokenizer_model: str, max_length: int,
                   tokenizer_type: str = "auto", template: str = "auto", quiet: bool = False,
                   log_interval: float = 1.0) -> SFTSummary:
    """Write the token and loss-mask pairs for `input_paths` (jsonl, .gz/.zst too, parquet, Arrow,
    folders, globs: data_tools.inputs); see the module docstring.
    Raises DataToolsError (one line) for bad arguments before any work and for the first bad line."""
    t0 = time.perf_counter()
    inputs = resolve_inputs(input_paths)
    paths = [f.path for f in inputs]
    output_prefix = check_output_prefix(output_prefix)
    if max_length < 2:
        raise DataToolsError(f"--max-length {max_length}: must be >= 2 (a prompt token and a target)")
    try:
        enc = ChatEncoder(tokenizer_model, tokenizer_type, template)
    except (ChatError, TokenizerError) as e:
        raise DataToolsError(str(e)) from None
    from data_tools.indexed_writer import BinIdxWriter, optimal_dtype

    summary = SFTSummary(outputs=output_prefixes(output_prefix), template=enc.template)
    writers = []
    progress = Progress("sft", input_bytes(inputs), quiet, log_interval, unit="samples")
    try:
        tok_w = BinIdxWriter(summary.outputs[0], optimal_dtype(enc.vocab_size))
        writers.append(tok_w)
        mask_w = BinIdxWriter(summary.outputs[1], np.uint8)
        writers.append(mask_w)
        for chunk in iter_records(inputs, RECORD_KEYS):
            ids_parts, mask_parts, lengths = [], [], []
            for i in range(len(chunk.records)):
                where = chunk.where(i)
                try:
                    record = _parse(chunk, i)
                    if record is None:
                        summary.blank_lines += 1
                        continue
                    ids, mask = enc.encode(messages_of(record))
                except ChatError as e:
                    raise DataToolsError(f"{where}: {e}; fix the line (nothing was written)") from None
                if len(ids) > max_length:
                    ids, mask = ids[:max_length], mask[:max_length]
                    if not any(mask[1:]):  # mask[0] is never a target: nothing precedes it
                        summary.truncated_away += 1
                        continue
                    summary.truncated += 1
                ids_parts.append(np.asarray(ids, np.int64))
                mask_parts.append(np.asarray(mask, np.uint8))
                lengths.append(len(ids))
            progress.update(chunk.path, chunk.input_pos, tok_w.documents + len(lengths))
            if not lengths:
                continue
            lens = np.asarray(lengths, np.int32)
            counts = np.ones(len(lengths), np.int64)  # one sequence per document
            tok_w.add_documents(np.concatenate(ids_parts), lens, counts)
            mask_w.add_documents(np.concatenate(mask_parts), lens, counts)
            summary.target_tokens += int(sum(int(m.sum()) for m in mask_parts))
        summary.samples, summary.tokens = tok_w.documents, tok_w.tokens
        if summary.samples == 0:
            raise DataToolsError(f"{paths[0]}: no sample left to write ({summary.truncated_away} had all their "
                                 f"response tokens beyond --max-length {max_length}); raise --max-length")
        mask_w.finalize()  # the side file first: the token prefix (what training is given) appears last
        tok_w.finalize()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        progress.close()
    summary.seconds = time.perf_counter() - t0
    if not quiet:
        print(summary, file=sys.stderr)
    return summary


# The fields a record may have (a parquet/Arrow file's other columns are not read).
RECORD_KEYS = ("messages", "prompt", "response")


def _parse(chunk, i: int):
    """Record i of `chunk` (None: a blank line); ChatError for a line that is not JSON."""
    try:
        return load_record(chunk, i)
    except UnparsableLine as e:
        raise ChatError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.sft", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help=".jsonl(.gz/.zst), .parquet, .arrow files (folders, "
                   "quoted globs, as preprocess) of chats or prompt/response pairs")
    p.add_argument("--output-prefix", required=True,
                   help="writes PREFIX_sft_document.bin/.idx and PREFIX_sft_document_loss_mask.bin/.idx")
    p.add_argument("--tokenizer-model", required=True,
                   help="sentencepiece .model, or a Hugging Face tokenizer directory (tokenizer.json)")
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="auto")
    p.add_argument("--template", choices=TEMPLATES, default="auto",
                   help="auto: the tokenizer's chat_template if it has one, else the default plain-text template")
    p.add_argument("--max-length", type=int, required=True,
                   help="tokens per sample at most (training packs samples into data.seq_length + 1 tokens)")
    p.add_argument("--log-interval", type=float, default=1.0,
                   help="seconds between progress updates (off a terminal: one plain line each)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    sft_preprocess(a.input, a.output_prefix, a.tokenizer_model, a.max_length, a.tokenizer_type, a.template, a.quiet,
                   a.log_interval)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
