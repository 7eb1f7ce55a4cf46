"""Throughput of data_tools.clean's per-document work, one process, beside the reference libraries.

    python bench/bench_clean.py [--input corpus.jsonl] [--mb 4]
    python bench/bench_clean.py --limit-only [--limit-mb 256] [--factor 4]
    python bench/bench_clean.py --vs-datatrove-only

On the same documents (the first --mb MB of texts of --input; default: the stdlib corpus that
`python -m data_tools.corpus` builds), each in this process, one core:
  1. mtds normalize (ftfy + NFC + whitespace) + Gopher quality + repetition filters (whitespace words)
  2. the same rules on datatrove's words (word_splitter="datatrove", spaCy tokenizer)
  3. datatrove's FTFYFormatter + GopherQualityFilter + GopherRepetitionFilter
  4. MinHash signatures + LSH: mtds (rensa, 14 x 8 bands) and datasketch (MinHash + MinHashLSH, 14 x 8)
Prints documents/s and MB/s (UTF-8 bytes of text) per row, the kept counts, and the peak RSS.
datatrove's own MinHash, a multi-stage disk pipeline (signatures, buckets, clusters), is timed
end to end beside `clean --work-dir` last.

Then dedup in bounded memory: a corpus --factor times --limit-mb (random 150-word documents, ~1 KB,
with planted near and exact copies) cleaned by `python -m data_tools.clean --off quality --off
repetition` in a child process whose address space is capped at --limit-mb (RLIMIT_AS: everything
it maps counts, libraries included: the imports alone take ~165 MiB, not counting the ~1 GiB
that rensa's import reserves and, refused, does without), one process (--workers 1): once in
memory (the index grows ~1.4 KB a document: it runs out) and once with --work-dir (keys on disk,
--memory-mb an eighth of the limit). Each row: the child's own peak RSS (wait4), time, and what it
removed against what was planted.

Last, the MinHash dedup pipelines end to end, one worker each, in child processes, on the same
random corpus (one block of 10,000 documents, letters for words): `data_tools.clean --off quality
--off repetition --work-dir` (normalize, signatures, exact and near dedup from disk, the output)
against datatrove's four stages (MinhashDedupSignature, MinhashDedupBuckets x 14 tasks,
MinhashDedupCluster, MinhashDedupFilter + JsonlWriter, its MinhashConfig defaults: 5-grams, 14 x 8).
datatrove 0.10.1 hashes shingles with xxhash's str API, which xxhash 4 removed: the bench passes
them encoded (the only change).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
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
    print(f"| {name} | {len(texts)} | {kept} | {s:.1f} | {row['docs_per_s']:.0f} | {row['mb_per_s']:.2f} |",
          flush=True)
    return row


def _letters(i: int) -> str:
    out = ""
    while True:
        i, r = divmod(i, 26)
        out += "abcdefghijklmnopqrstuvwxyz"[r]
        if not i:
            return out


def write_corpus(path: str, mb: float, seed: int = 0, letters: bool = False) -> dict:
    """Random documents of 150 words from 50,000 ("w0".."w49999", or with `letters` "a".."ctvb":
    datatrove's MinHash turns every digit into 0) until `mb` MB: in each block of 10,000, every 50th
    a near copy of an earlier document of its block (2 words replaced: 5-gram shingle Jaccard ~0.87)
    and every 97th (not a near copy) an exact copy."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array([_letters(i) if letters else f"w{i}" for i in range(50_000)])
    planted = {"documents": 0, "near": 0, "exact": 0, "bytes": 0}
    with open(path, "w", encoding="utf-8") as f:
        while planted["bytes"] < mb * 1e6:
            idx = rng.integers(0, len(vocab), (10_000, 150))
            for i in range(1, len(idx)):
                if i % 50 == 49:
                    idx[i] = idx[rng.integers(0, i)]
                    idx[i, rng.choice(150, 2, replace=False)] = rng.integers(0, len(vocab), 2)
                    planted["near"] += 1
                elif i % 97 == 96:
                    idx[i] = idx[rng.integers(0, i)]
                    planted["exact"] += 1
            text = "".join('{"text": "' + " ".join(row) + '"}\n' for row in vocab[idx])
            f.write(text)
            planted["bytes"] += len(text)
            planted["documents"] += len(idx)
    return planted


def limited_run(cmd: list[str], limit_mb: float) -> dict:
    """Run `cmd` with its address space capped at `limit_mb`; its exit code, seconds, peak RSS."""
    limit = int(limit_mb * 2**20)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN is a max over all)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "seconds": time.perf_counter() - t0, "rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "stderr": err}


def bounded_dedup(limit_mb: float, factor: float, folder: str) -> None:
    corpus = os.path.join(folder, "big.jsonl")
    t0 = time.perf_counter()
    planted = write_corpus(corpus, factor * limit_mb * 2**20 / 1e6)
    mb = planted["bytes"] / 1e6
    print(f"\ncorpus: {planted['documents']} documents, {mb:.0f} MB ({mb * 1e6 / 2**20 / limit_mb:.1f}x the "
          f"{limit_mb:.0f} MiB limit), {planted['near']} near and {planted['exact']} exact copies planted "
          f"({time.perf_counter() - t0:.0f} s to write)\n")
    print("| path | address-space limit | s | CPU s | MB/s | peak RSS | result |\n|---|---|---|---|---|---|---|")
    base = [sys.executable, "-m", "data_tools.clean", "--input", corpus, "--off", "quality", "--off", "repetition",
            "--log-interval", "5"]
    paths = {"in memory": ["--output", os.path.join(folder, "mem.jsonl")],
             "--work-dir (keys on disk)": ["--output", os.path.join(folder, "disk.jsonl"), "--work-dir",
                                           os.path.join(folder, "work"), "--memory-mb", str(limit_mb / 8)]}
    for name, extra in paths.items():
        r = limited_run(base + extra, limit_mb)
        if r["rc"] == 0:
            m = json.loads(open(os.path.join(extra[1] + ".manifest.json")).read())
            rules = m["rules"]
            result = (f"kept {m['documents']['kept']} of {m['documents']['in']}; exact_duplicate "
                      f"{rules['exact_duplicate']['documents']} (planted {planted['exact']}), near_duplicate "
                      f"{rules['near_duplicate']['documents']} (planted {planted['near']})")
        else:
            got = re.findall(r"clean[^:\n]*: \d+ docs, ([\d.]+)/", r["stderr"])
            why = "MemoryError" if "MemoryError" in r["stderr"] else r["stderr"].strip().splitlines()[-1][:80]
            result = f"ran out (exit {r['rc']}, {why}) after {got[-1] if got else '?'} MB of {mb:.0f}"
            if "--work-dir" in extra:
                print("\n".join(r["stderr"].splitlines()[-6:]), file=sys.stderr)
        rate = f"{mb / r['seconds']:.2f}" if r["rc"] == 0 else "-"
        print(f"| {name} | {limit_mb:.0f} MiB | {r['seconds']:.0f} | {r['cpu_s']:.0f} | {rate} | "
              f"{r['rss_mb']:.0f} MB | {result} |", flush=True)


def _datatrove_minhash(folder: str) -> None:
    """datatrove's MinHash dedup of folder/in into folder/out (run in a child by vs_datatrove)."""
    import xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashes import xxhash as dt_xxhash

    # datatrove 0.10.1 passes str to xxhash, which xxhash 4 refuses; encode, as older xxhash did
    dt_xxhash.xxhash64 = lambda d: xxhash.xxh64_intdigest(d.encode() if isinstance(d, str) else d)
    cfg = MinhashConfig()
    stages = [([JsonlReader(f"{folder}/in"), MinhashDedupSignature(f"{folder}/sigs", config=cfg)], 1),
              ([MinhashDedupBuckets(f"{folder}/sigs", f"{folder}/buckets", config=cfg)], cfg.num_buckets),
              ([MinhashDedupCluster(f"{folder}/buckets", f"{folder}/remove", config=cfg)], 1),
              ([JsonlReader(f"{folder}/in"), MinhashDedupFilter(f"{folder}/remove"), JsonlWriter(f"{folder}/out")], 1)]
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{folder}/logs_{i}").run()


def vs_datatrove(folder: str) -> None:
    import gzip

    os.makedirs(os.path.join(folder, "in"))
    corpus = os.path.join(folder, "in", "corpus.jsonl")
    planted = write_corpus(corpus, 1, letters=True)
    mb = planted["bytes"] / 1e6
    print(f"\nMinHash dedup end to end, one worker: {planted['documents']} documents, {mb:.1f} MB, "
          f"{planted['near']} near and {planted['exact']} exact copies planted\n")
    print("| pipeline | s | CPU s | MB per CPU s | peak RSS | removed |\n|---|---|---|---|---|---|")
    mtds = [sys.executable, "-m", "data_tools.clean", "--input", corpus, "--output", os.path.join(folder, "m.jsonl"),
            "--off", "quality", "--off", "repetition", "--work-dir", os.path.join(folder, "work"), "--quiet"]
    theirs = [sys.executable, os.path.abspath(__file__), "--datatrove-minhash", folder]
    for name, cmd in (("mtds clean --work-dir (rensa, disk dedup)", mtds),
                      ("datatrove MinhashDedup* x 4 stages", theirs)):
        r = limited_run(cmd, 1 << 20)
        if r["rc"]:
            print(f"| {name} | failed: {r['stderr'].strip().splitlines()[-1][:100]} |||||")
            continue
        if "datatrove" in name:
            with gzip.open(os.path.join(folder, "out", "00000.jsonl.gz"), "rt") as f:
                removed = planted["documents"] - sum(1 for _ in f)
        else:
            removed = json.loads(open(os.path.join(folder, "m.jsonl.manifest.json")).read())["documents"]["removed"]
        print(f"| {name} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {mb / r['cpu_s']:.2f} | {r['rss_mb']:.0f} MB | "
              f"{removed} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="a jsonl corpus (default: the stdlib corpus, built in a temp dir)")
    p.add_argument("--mb", type=float, default=4.0, help="MB of text to time")
    p.add_argument("--skip-datatrove", action="store_true")
    p.add_argument("--limit-mb", type=float, default=256, help="the bounded-memory run's address-space cap, MiB")
    p.add_argument("--factor", type=float, default=4, help="its corpus: this many times --limit-mb")
    p.add_argument("--limit-only", action="store_true", help="only the bounded-memory dedup")
    p.add_argument("--skip-limit", action="store_true", help="no bounded-memory dedup")
    p.add_argument("--vs-datatrove-only", action="store_true", help="only the MinHash pipelines end to end")
    p.add_argument("--datatrove-minhash", metavar="DIR", help=argparse.SUPPRESS)  # the child of vs_datatrove
    a = p.parse_args()
    if a.datatrove_minhash:
        return _datatrove_minhash(a.datatrove_minhash)
    if a.limit_only or a.vs_datatrove_only:
        with tempfile.TemporaryDirectory() as d:
            (bounded_dedup(a.limit_mb, a.factor, d) if a.limit_only else vs_datatrove(d))
        return
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
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        print("| datasketch MinHash + MinHashLSH 14x8 | (not installed: pip install datasketch) |||||")
        return finish(a)
    from data_tools.near_dedup import shingles

    lsh, n = MinHashLSH(num_perm=112, params=(14, 8)), iter(range(10**9))

    def datasketch_keep(t):
        m = MinHash(num_perm=112, seed=1)
        m.update_batch([s.encode() for s in shingles(t, 5)])
        dup = bool(lsh.query(m))
        lsh.insert(next(n), m)
        return not dup
    timed("datasketch MinHash + MinHashLSH 14x8", texts, datasketch_keep)
    finish(a)


def finish(a) -> None:
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if not a.skip_limit:
        with tempfile.TemporaryDirectory() as d:
            bounded_dedup(a.limit_mb, a.factor, d)
    if not a.skip_datatrove:
        with tempfile.TemporaryDirectory() as d:
            vs_datatrove(d)


if __name__ == "__main__":
    main()
