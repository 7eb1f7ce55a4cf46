"""Throughput of data_tools.clean's per-document work, one process, beside the reference libraries.

    python bench/bench_clean.py [--input corpus.jsonl] [--mb 4]

On the same documents (the first --mb MB of texts of --input; default: the stdlib corpus that
`python -m data_tools.corpus` builds), each in this process, one core:
  1. mtds normalize (ftfy + NFC + whitespace) + Gopher quality + repetition filters (whitespace words)
  2. the same rules on datatrove's words (word_splitter="datatrove", spaCy tokenizer)
  3. datatrove's FTFYFormatter + GopherQualityFilter + GopherRepetitionFilter
  4. MinHash signatures + LSH: mtds (rensa, 14 x 8 bands) and datasketch (MinHash + MinHashLSH, 14 x 8)
Prints documents/s and MB/s (UTF-8 bytes of text) per row, the kept counts, and the peak RSS.
datatrove's own MinHash is a multi-stage disk pipeline (signatures, buckets, clusters) and is
not timed here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_texts(path: str | None, mb: float) -> list[str]:
    if path is None:
        from data_tools.corpus import build_corpus

        path = os.path.join(tempfile.mkdtemp(), "corpus.jsonl")
        build_corpus(path, quiet=True)
    texts, size = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line).get("text")
            if isinstance(t, str) and t.strip():
                texts.append(t)
                size += len(t.encode())
                if size >= mb * 1e6:
                    break
    return texts


def timed(name: str, texts: list[str], fn) -> dict:
    t0 = time.perf_counter()
    kept = sum(1 for t in texts if fn(t))
    s = time.perf_counter() - t0
    mb = sum(len(t.encode()) for t in texts) / 1e6
    row = {"name": name, "docs": len(texts), "kept": kept, "seconds": round(s, 2),
           "docs_per_s": round(len(texts) / s, 1), "mb_per_s": round(mb / s, 3)}
    print(f"| {name} | {len(texts)} | {kept} | {s:.1f} | {row['docs_per_s']:.0f} | {row['mb_per_s']:.2f} |", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="a jsonl corpus (default: the stdlib corpus, built in a temp dir)")
    p.add_argument("--mb", type=float, default=4.0, help="MB of text to time")
    p.add_argument("--skip-datatrove", action="store_true")
    a = p.parse_args()
    texts = load_texts(a.input, a.mb)
    print(f"{len(texts)} documents, {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB, one process\n")
    print("| pipeline | docs | kept | s | docs/s | MB/s |\n|---|---|---|---|---|---|")

    from data_tools.clean_config import CleanConfig
    from data_tools.gopher_quality import quality_failure, words_splitter
    from data_tools.gopher_repetition import repetition_failure
    from data_tools.near_dedup import NearDedup, signature
    from data_tools.normalize import normalize

    def mtds(cfg):
        split = words_splitter(cfg.word_splitter)

        def keep(t):
            t = normalize(t)
            w = split(t)
            return quality_failure(t, w, cfg) is None and repetition_failure(t, w, cfg) is None
        return keep

    timed("mtds normalize + Gopher filters (whitespace words)", texts, mtds(CleanConfig()))
    if not a.skip_datatrove:
        timed("mtds normalize + Gopher filters (datatrove's words)", texts,
              mtds(CleanConfig(word_splitter="datatrove")))
        from datatrove.data import Document
        from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
        from datatrove.pipeline.formatters import FTFYFormatter

        ftfy_step, q, r = FTFYFormatter(), GopherQualityFilter(), GopherRepetitionFilter()

        def datatrove_keep(t):
            d = Document(text=t, id="x")
            d.text = ftfy_step.format(d.text)
            return q.filter(d) is True and r.filter(d) is True
        timed("datatrove FTFYFormatter + GopherQuality + GopherRepetition", texts, datatrove_keep)

    cfg = CleanConfig()
    index = NearDedup(cfg.minhash_bands, cfg.minhash_rows)
    timed("mtds MinHash (rensa) + LSH 14x8", texts,
          lambda t: not index.is_duplicate(signature(t, 5, cfg.minhash_permutations, cfg.minhash_seed)))
    from datasketch import MinHash, MinHashLSH

    from data_tools.near_dedup import shingles

    lsh, n = MinHashLSH(num_perm=112, params=(14, 8)), iter(range(10**9))

    def datasketch_keep(t):
        m = MinHash(num_perm=112, seed=1)
        m.update_batch([s.encode() for s in shingles(t, 5)])
        dup = bool(lsh.query(m))
        lsh.insert(next(n), m)
        return not dup
    timed("datasketch MinHash + MinHashLSH 14x8", texts, datasketch_keep)
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
