"""Preprocess throughput by input format: the same corpus as jsonl, parquet and Arrow, in one run.

    python bench/bench_parquet.py [--cache-dir ~/.cache/mtds-bench] [--min-mb 50] [--repeats 3] \\
        [--docs files|paragraphs] [--row-group-mb 1] [--workers 2] [--skip-experiment]

Takes bench_preprocess.py's >= 50 MB stdlib jsonl and 8k tokenizer (built in the cache dir if
absent), writes the same documents in the same order as parquet (snappy, row groups of
~--row-group-mb of text) and as an Arrow IPC stream (1000-row batches, what `datasets`
save_to_disk writes), and times `data_tools.preprocess.preprocess`, interleaved per repeat:
  jsonl                    the .jsonl file
  parquet                  the .parquet file (the main process reads batches, workers get columns)
  parquet, workers read    experiment: each worker reads whole row groups itself (one chunk each)
  arrow                    the .arrow stream file
Checks that every variant wrote byte-identical .bin/.idx files, then prints a markdown table of
medians: seconds, MB/s of text, docs/s, CPU seconds, and throughput relative to jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from unittest import mock

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from bench_preprocess import build_inputs, cpu_seconds
from data_tools import preprocess as preprocess_mod
from data_tools.indexed_writer import import_indexed_dataset


def write_columnar(corpus: str, row_group_mb: float) -> tuple[str, str, int, float]:
    """corpus.jsonl -> corpus.parquet and corpus.arrow beside it (once); (paths, docs, text MB)."""
    stem = corpus[: -len(".jsonl")]
    pq_path, arrow_path = f"{stem}_rg{row_group_mb:g}mb.parquet", f"{stem}.arrow"
    texts = [orjson.loads(line)["text"] for line in open(corpus, "rb")]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    if not os.path.exists(pq_path):
        rows = max(1, int(row_group_mb * 1e6 * len(texts) / (mb * 1e6)))
        pq.write_table(pa.table({"text": texts}), pq_path + ".tmp", row_group_size=rows)
        os.replace(pq_path + ".tmp", pq_path)
    if not os.path.exists(arrow_path):
        table = pa.table({"text": texts})
        with pa.OSFile(arrow_path + ".tmp", "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
            for batch in table.to_batches(max_chunksize=1000):
                w.write_batch(batch)
        os.replace(arrow_path + ".tmp", arrow_path)
    return pq_path, arrow_path, len(texts), mb


@dataclass
class RowGroupChunk:
    """Duck-types columnar_reader.ColumnChunk, but the worker reads the row group itself."""

    path: str
    first_row: int
    row_group: int
    keys: tuple
    input_pos: int

    @property
    def columns(self) -> list:
        t = pq.ParquetFile(self.path).read_row_group(self.row_group, columns=list(self.keys), use_threads=False)
        return [t.column(k).combine_chunks() for k in self.keys]


def row_group_chunks(inputs, json_keys):
    for f in inputs:
        md = pq.ParquetFile(f.path).metadata
        row = 0
        for rg in range(md.num_row_groups):
            yield RowGroupChunk(f.path, row, rg, tuple(json_keys), os.path.getsize(f.path))
            row += md.row_group(rg).num_rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/mtds-bench"))
    p.add_argument("--min-mb", type=float, default=50)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--docs", choices=["files", "paragraphs"], default="files")
    p.add_argument("--row-group-mb", type=float, default=1.0, help="text per parquet row group")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-experiment", action="store_true", help="leave out 'parquet, workers read row groups'")
    a = p.parse_args(argv)

    corpus, model = build_inputs(a.cache_dir, a.min_mb, a.vocab_size, a.docs)
    pq_path, arrow_path, n_docs, mb = write_columnar(corpus, a.row_group_mb)
    import_indexed_dataset()  # megatron-core import (seconds) outside the timings
    md = pq.ParquetFile(pq_path).metadata
    print(f"corpus: {mb:.1f} MB of text, {n_docs} documents; jsonl {os.path.getsize(corpus) / 1e6:.1f} MB, "
          f"parquet {os.path.getsize(pq_path) / 1e6:.1f} MB ({md.num_row_groups} row groups), "
          f"arrow {os.path.getsize(arrow_path) / 1e6:.1f} MB; {len(os.sched_getaffinity(0))} CPUs", file=sys.stderr)
    variants = {
        "jsonl": ([corpus], None),
        "parquet": ([pq_path], None),
        "parquet, workers read row groups": ([pq_path], row_group_chunks),
        "arrow (IPC stream)": ([arrow_path], None),
    }
    if a.skip_experiment:
        del variants["parquet, workers read row groups"]
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            print(f"repeat {r + 1}/{a.repeats}", file=sys.stderr)
            for i, (name, (inputs, chunker)) in enumerate(variants.items()):
                out = os.path.join(tmp, f"v{i}")
                patch = mock.patch.object(preprocess_mod, "iter_chunks", chunker) if chunker else contextlib.nullcontext()
                with patch:
                    c0, t0 = cpu_seconds(), time.perf_counter()
                    s = preprocess_mod.preprocess(inputs, out, model, workers=a.workers, quiet=True)
                    times[name].append(time.perf_counter() - t0)
                    cpus[name].append(cpu_seconds() - c0)
                assert s.documents == n_docs, (name, s)
                print(f"  {name:<34} {times[name][-1]:7.2f}s", file=sys.stderr)
        for i in range(1, len(variants)):
            for ext in (".bin", ".idx"):
                a_, b_ = (os.path.join(tmp, f"v{j}_text_document{ext}") for j in (0, i))
                assert filecmp.cmp(a_, b_, shallow=False), f"{list(variants)[i]}: {ext} differs from jsonl's"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n--docs {a.docs}: {mb:.1f} MB of text, {n_docs} documents, {md.num_row_groups} parquet row groups, "
          f"{a.workers} workers; median of {a.repeats}; all outputs byte-identical to jsonl's\n")
    print("| input | seconds | MB/s | docs/s | CPU s | throughput vs jsonl |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, t in med.items():
        print(f"| {k} | {t:.2f} | {mb / t:.2f} | {n_docs / t:,.0f} | {statistics.median(cpus[k]):.1f} | "
              f"{med['jsonl'] / t:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
