"""The embedded default dataset: the interpreter's standard library, tokenized, no download.

    python -m data_tools.default_dataset --out-dir data/stdlib [--split-sentences]

Builds, in `out_dir`, each step only if its final output is missing (idempotent, and a
killed run resumes at the step it was in, since every step writes temp-then-rename):
    corpus.jsonl                        data_tools.corpus (stdlib .py/.rst/.txt, ~30 MB)
    tokenizer.model / tokenizer.vocab   data_tools.train_tokenizer (BPE, sampled lines)
    stdlib_text_document.bin/.idx       data_tools.preprocess --append-eod
    stdlib_text_sentence.bin/.idx       the same with --split-sentences (for BERT), on request
    tokenizer_t5.model, stdlib_t5_text_sentence.bin/.idx
                                        with --sentinel-tokens (for T5): a tokenizer with T5's
                                        sentinels and the _sentence data it tokenizes, on request
The training entry point calls `build_default_dataset` on rank 0 when no data flags are given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from data_tools.errors import DataToolsError, run_cli


def build_default_dataset(out_dir: str | os.PathLike, vocab_size: int = 8192, split_sentences: bool = False,
                          workers: int = 2, quiet: bool = False, sentinel_tokens: int = 0) -> dict:
    """Build (or reuse) the stdlib dataset in `out_dir`.

    Returns dict(prefix=<.bin/.idx prefix, _document or _sentence>, tokenizer_model=<path>,
    corpus=<jsonl path>, document_prefix=..., sentence_prefix=... or None). With `sentinel_tokens`
    (T5) the tokenizer is another one, trained with that many sentinels (the one without them
    stays as it is, so the GPT and BERT data keep their ids), and `prefix` its `_sentence` data.
    """
    from data_tools.corpus import build_corpus
    from data_tools.preprocess import preprocess
    from data_tools.train_tokenizer import train_tokenizer

    t0 = time.perf_counter()
    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise DataToolsError(f"{out_dir}: cannot create output directory ({e.strerror})") from None
    corpus = os.path.join(out_dir, "corpus.jsonl")
    tok_prefix = os.path.join(out_dir, "tokenizer")
    tokenizer_model = tok_prefix + ".model"
    data_prefix = os.path.join(out_dir, "stdlib")
    doc_prefix = data_prefix + "_text_document"
    sent_prefix = data_prefix + "_text_sentence"

    def have(prefix: str) -> bool:
        return os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")

    def say(msg: str) -> None:
        if not quiet:
            print(f"default_dataset: {msg}", file=sys.stderr)

    if not os.path.isfile(corpus):
        build_corpus(corpus, stdlib=True, quiet=quiet)
    if sentinel_tokens:
        t5_tokenizer = os.path.join(out_dir, "tokenizer_t5")
        t5_prefix = os.path.join(out_dir, "stdlib_t5")
        if not os.path.isfile(t5_tokenizer + ".model"):
            train_tokenizer([corpus], t5_tokenizer, vocab_size=vocab_size, quiet=quiet, sentinel_tokens=sentinel_tokens)
        if not have(t5_prefix + "_text_sentence"):
            preprocess([corpus], t5_prefix, t5_tokenizer + ".model", append_eod=True, workers=workers,
                       split_sentences=True, quiet=quiet)
        say(f"ready in {out_dir} ({time.perf_counter() - t0:.1f}s)")
        return dict(prefix=t5_prefix + "_text_sentence", tokenizer_model=t5_tokenizer + ".model", corpus=corpus,
                    document_prefix=None, sentence_prefix=t5_prefix + "_text_sentence")
    if not os.path.isfile(tokenizer_model):
        train_tokenizer([corpus], tok_prefix, vocab_size=vocab_size, quiet=quiet)
    if not have(doc_prefix):
        preprocess([corpus], data_prefix, tokenizer_model, append_eod=True, workers=workers, quiet=quiet)
    if split_sentences and not have(sent_prefix):
        preprocess([corpus], data_prefix, tokenizer_model, append_eod=True, workers=workers,
                   split_sentences=True, quiet=quiet)
    say(f"ready in {out_dir} ({time.perf_counter() - t0:.1f}s)")
    return dict(
        prefix=sent_prefix if split_sentences else doc_prefix,
        tokenizer_model=tokenizer_model,
        corpus=corpus,
        document_prefix=doc_prefix,
        sentence_prefix=sent_prefix if split_sentences else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.default_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="data/stdlib")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--split-sentences", action="store_true", help="also build the _sentence variant (BERT)")
    p.add_argument("--sentinel-tokens", type=int, default=0, metavar="N",
                   help="instead: a tokenizer with N T5 sentinels and its _sentence data (T5; mtds uses 100)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    out = build_default_dataset(a.out_dir, a.vocab_size, a.split_sentences, a.workers, a.quiet, a.sentinel_tokens)
    print(out["prefix"])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
