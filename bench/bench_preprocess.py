"""Preprocess throughput: ours vs the floor (sentencepiece alone) vs a Megatron-LM-style baseline.

    python bench/bench_preprocess.py [--cache-dir ~/.cache/mtds-bench] [--min-mb 50] [--repeats 3]

Builds a >= 50 MB jsonl of real text (the interpreter's stdlib corpus, repeated as needed) and an
8k BPE tokenizer in the cache dir, then times, with the same tokenizer, interleaved per repeat:
  floor     sentencepiece batch-encoding every text (already in memory) on all cores
  baseline  Megatron-LM's design: Pool(2).imap(json.loads + encode one document, chunksize=32)
            and one IndexedDatasetBuilder.add_document per document
  ours      data_tools.preprocess.preprocess with 1 and 2 workers (reads, parses, writes .bin/.idx)
Prints a markdown table of medians: seconds, docs/s, MB/s, tokens/s, CPU seconds, share of the
floor's throughput, speed-up over the baseline.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import orjson

from data_tools.corpus import build_corpus
from data_tools.indexed_writer import import_indexed_dataset
from data_tools.preprocess import preprocess
from data_tools.train_tokenizer import train_tokenizer


def paragraphs_jsonl(src: str, dst: str) -> None:
    """Split every document at blank lines: many short documents (~0.5 KB, like web-text
    paragraphs), where per-document overhead matters most."""
    with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
        for line in f:
            for para in orjson.loads(line)["text"].split("\n\n"):
                if para.strip():
                    g.write(orjson.dumps({"text": para}) + b"\n")
    os.replace(dst + ".tmp", dst)


def build_inputs(cache: str, min_mb: float, vocab_size: int, docs: str) -> tuple[str, str]:
    os.makedirs(cache, exist_ok=True)
    stdlib = os.path.join(cache, "stdlib.jsonl")
    if not os.path.exists(stdlib):
        build_corpus(stdlib, stdlib=True, quiet=True)
    source = stdlib
    if docs == "paragraphs":
        source = os.path.join(cache, "stdlib_paragraphs.jsonl")
        if not os.path.exists(source):
            paragraphs_jsonl(stdlib, source)
    corpus = os.path.join(cache, f"bench_{docs}_{int(min_mb)}mb.jsonl")
    if not os.path.exists(corpus):
        data = open(source, "rb").read()
        reps = int(min_mb * 1e6 // len(data)) + 1
        with open(corpus + ".tmp", "wb") as f:
            for _ in range(reps):
                f.write(data)
        os.replace(corpus + ".tmp", corpus)
    tok = os.path.join(cache, f"tok{vocab_size}")
    if not os.path.exists(tok + ".model"):
        train_tokenizer([stdlib], tok, vocab_size=vocab_size, quiet=True)
    return corpus, tok + ".model"


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# -- baseline: one document at a time, as Megatron-LM's tools/preprocess_data.py does -------------
_SP = None


def _baseline_init(model):
    global _SP
    import sentencepiece

    _SP = sentencepiece.SentencePieceProcessor(model_file=model)


def _baseline_encode(line: str):
    text = json.loads(line)["text"]
    ids = _SP.encode(text)
    ids.append(_SP.eos_id())
    return ids, len(line)


def run_baseline(corpus: str, model: str, out_prefix: str, workers: int = 2) -> tuple[int, int]:
    idx = import_indexed_dataset()
    builder = idx.IndexedDatasetBuilder(out_prefix + ".bin", dtype=np.uint16)
    docs = tokens = 0
    with open(corpus, encoding="utf-8") as f, mp.get_context("fork").Pool(
            workers, initializer=_baseline_init, initargs=(model,)) as pool:
        for ids, _ in pool.imap(_baseline_encode, f, 32):
            builder.add_document(ids, [len(ids)])
            docs += 1
            tokens += len(ids)
    builder.finalize(out_prefix + ".idx")
    return docs, tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/mtds-bench"))
    p.add_argument("--min-mb", type=float, default=50)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--docs", choices=["files", "paragraphs"], default="files",
                   help="one document per stdlib file (~17 KB) or per blank-line-separated paragraph")
    a = p.parse_args(argv)
    import sentencepiece

    corpus, model = build_inputs(a.cache_dir, a.min_mb, a.vocab_size, a.docs)
    import_indexed_dataset()  # megatron-core import (seconds) outside the timings
    mb = os.path.getsize(corpus) / 1e6
    texts = [orjson.loads(line)["text"] for line in open(corpus, "rb")]
    n_docs = len(texts)
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    ncpu = len(os.sched_getaffinity(0))  # honours taskset, unlike os.cpu_count()
    print(f"corpus {corpus}: {mb:.1f} MB, {n_docs} documents; tokenizer {model}; {ncpu} CPUs", file=sys.stderr)
    times: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    tokens: dict[str, int] = {}

    def timed(name, fn):
        c0, t0 = cpu_seconds(), time.perf_counter()
        ntok = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        cpus.setdefault(name, []).append(cpu_seconds() - c0)
        tokens[name] = ntok
        print(f"  {name:<24} {times[name][-1]:7.2f}s", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            print(f"repeat {r + 1}/{a.repeats}", file=sys.stderr)
            timed("floor (sp ints)", lambda: sum(map(len, sp.encode(texts, num_threads=ncpu))) + n_docs)
            timed("floor (sp numpy)", lambda: sum(map(len, sp.encode(texts, num_threads=ncpu, out_type="numpy")))
                  + n_docs)
            timed("baseline (2 procs)", lambda: run_baseline(corpus, model, os.path.join(tmp, "base"))[1])
            for w in (1, 2):
                timed(f"ours ({w} worker{'s' * (w > 1)})",
                      lambda: preprocess([corpus], os.path.join(tmp, "ours"), model, workers=w, quiet=True).tokens)
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = min(med["floor (sp ints)"], med["floor (sp numpy)"])
    base = med["baseline (2 procs)"]
    print(f"\n--docs {a.docs}: {mb:.1f} MB, {n_docs} documents, {tokens['ours (2 workers)']} tokens (with EOD); "
          f"median of {a.repeats}; floor = faster sentencepiece-only run\n")
    print("| method | seconds | docs/s | MB/s | tokens/s | CPU s | vs floor | vs baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, t in med.items():
        print(f"| {k} | {t:.2f} | {n_docs / t:,.0f} | {mb / t:.2f} | {tokens[k] / t / 1e6:.2f}M | "
              f"{statistics.median(cpus[k]):.1f} | {floor / t:.2f} | {base / t:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
