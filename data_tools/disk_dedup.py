"""Exact and near dedup from keys on disk, hash range by hash range (data_tools.clean --work-dir).

Every dedup candidate (a document no filter removed) is one fixed-size record of a shard's `.sig`
file, in input order: the 128-bit xxh3 digest of its normalized text (exact dedup), the b 64-bit
band keys of its MinHash signature (near dedup; data_tools.near_dedup.band_keys), and two byte
counts for the manifest. The band keys, not the b x r signature values, are what LSH compares,
and 4x smaller (14 x 8 bytes a document instead of 112 x 4).

`dedup_flags` decides for every candidate what the in-memory path (ExactDedup and NearDedup, one
document after another) decides:
  exact: its digest is an earlier candidate's;
  near:  not exact, and in some band its key is that of an earlier candidate that was not exact.
Both say "not the first of its group of equal keys", so no ordered scan is needed: one pass
scatters (key, candidate number) pairs into files by the key's top bits (one set of files per band
for near), then each file is sorted alone and all but the first of each group are flagged. Memory:
the scatter buffers and the sort of one file, both sized from `memory_mb`, whatever the corpus;
the flags are one byte per candidate in a memory-mapped file. numpy's sorts do the work; the
scatter is written here because no library does this particular out-of-core group-by.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time

import numpy as np
import xxhash

from data_tools.near_dedup import band_keys

EXACT, NEAR = 1, 2
CHUNK = 1 << 16  # candidates read from a .sig file at a time
SORT_OVERHEAD = 4  # bytes a sort of one file needs per byte of the file (lexsort's index, the copy)
EXACT_PAIR = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("doc", "<u8")])
NEAR_PAIR = np.dtype([("key", "<u8"), ("doc", "<u8")])


def sig_dtype(bands: int) -> np.dtype:
    """One candidate's record: text digest, UTF-8 bytes as read (size) and as kept, band keys."""
    return np.dtype([("digest", "<u8", (2,)), ("size", "<u8"), ("kept_bytes", "<u8"), ("bands", "<u8", (bands,))])


class SigWriter:
    """Appends candidates' records to a `.sig` file; `add` per candidate, `flush` per chunk."""

    def __init__(self, f, bands: int, rows: int):
        self.f, self.bands, self.rows, self.dtype = f, bands, rows, sig_dtype(bands)
        self.pending: list[tuple[str, int, bytes]] = []
        self.count = 0

    def add(self, text: str, size: int, signature: bytes) -> None:
        self.pending.append((text, size, signature))

    def flush(self) -> None:
        if not self.pending:
            return
        rec = np.zeros(len(self.pending), self.dtype)
        encoded = [t.encode("utf-8", "surrogatepass") for t, _, _ in self.pending]
        rec["digest"] = np.frombuffer(b"".join(xxhash.xxh3_128_digest(e) for e in encoded), "<u8").reshape(-1, 2)
        rec["size"] = [s for _, s, _ in self.pending]
        rec["kept_bytes"] = [len(e) for e in encoded]
        if self.pending[0][2]:  # near dedup on: every candidate has a signature
            rec["bands"] = [band_keys(sig, self.bands, self.rows) for _, _, sig in self.pending]
        self.f.write(rec.tobytes())
        self.count += len(rec)
        self.pending.clear()


def read_sig(path: str, bands: int, start: int, count: int) -> np.ndarray:
    dt = sig_dtype(bands)
    return np.fromfile(path, dtype=dt, count=count, offset=start * dt.itemsize)


def sig_count(path: str, bands: int) -> int:
    return os.path.getsize(path) // sig_dtype(bands).itemsize


class _Scatter:
    """(kind, band, range) -> pairs, buffered in memory up to `limit` bytes, then appended to files."""

    def __init__(self, folder: str, limit: int):
        self.folder, self.limit, self.bytes = folder, limit, 0
        self.buffers: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, ranges: np.ndarray, pairs: np.ndarray) -> None:
        order = np.argsort(ranges, kind="stable")  # stable: candidates stay in input order in each file
        ranges, pairs = ranges[order], pairs[order]
        cuts = np.flatnonzero(np.diff(ranges)) + 1
        for r, part in zip(ranges[np.r_[0, cuts]], np.split(pairs, cuts)):
            self.buffers.setdefault(f"{name}_{int(r):05d}.bin", []).append(part)
        self.bytes += pairs.nbytes
        if self.bytes >= self.limit:
            self.flush()

    def flush(self) -> None:
        for name, parts in self.buffers.items():
            with open(os.path.join(self.folder, name), "ab") as f:
                np.concatenate(parts).tofile(f)
        self.buffers.clear()
        self.bytes = 0


def _range_bits(n: int, pair_bytes: int, budget: int) -> int:
    """Top bits of a key that cut n pairs into files whose sort fits in `budget` bytes."""
    bits = 0
    while (n * pair_bytes * SORT_OVERHEAD) >> bits > budget and bits < 20:
        bits += 1
    return bits


def _top_bits(keys: np.ndarray, bits: int) -> np.ndarray:
    return keys >> np.uint64(64 - bits) if bits else np.zeros(len(keys), np.uint64)


class _Log:
    """A line on stderr now (`say`), or at most every `interval` seconds (`every`): progress in a SLURM log."""

    def __init__(self, quiet: bool, interval: float):
        self.quiet, self.interval, self.last = quiet, interval, time.perf_counter()

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"clean: dedup: {msg}", file=sys.stderr, flush=True)
        self.last = time.perf_counter()

    def every(self, msg) -> None:
        if time.perf_counter() - self.last >= self.interval:
            self.say(msg())


def dedup_flags(sig_paths: list[str], scratch: str, bands: int, exact: bool, near: bool, memory_mb: float = 1024,
                quiet: bool = False, log_interval: float = 1.0) -> np.ndarray:
    """EXACT/NEAR flags (uint8, one per candidate, candidates numbered across `sig_paths` in order).
    `scratch`: an empty folder is made there (anything in it removed) for the range files."""
    counts = [sig_count(p, bands) for p in sig_paths]
    n = sum(counts)
    if n == 0 or not (exact or near):
        return np.zeros(n, np.uint8)
    shutil.rmtree(scratch, ignore_errors=True)  # a killed merge's files would be counted twice
    os.makedirs(scratch)
    budget = max(int(memory_mb * 2**20) // 2, 4096)  # half to sort one file, half to buffer the scatter
    exact_bits = _range_bits(n, EXACT_PAIR.itemsize, budget)
    near_bits = _range_bits(n, NEAR_PAIR.itemsize, budget)
    log = _Log(quiet, log_interval)
    log.say(f"{n} candidates: keys into {2 ** exact_bits if exact else 0} exact and "
        f"{bands} x {2 ** near_bits if near else 0} near hash ranges under {scratch}")
    scatter = _Scatter(scratch, budget)
    start = 0
    for path, count in zip(sig_paths, counts):
        for off in range(0, count, CHUNK):
            rec = read_sig(path, bands, off, min(CHUNK, count - off))
            doc = np.arange(start + off, start + off + len(rec), dtype=np.uint64)
            if exact:
                pairs = np.empty(len(rec), EXACT_PAIR)
                pairs["hi"], pairs["lo"], pairs["doc"] = rec["digest"][:, 0], rec["digest"][:, 1], doc
                scatter.add("exact", _top_bits(pairs["hi"], exact_bits), pairs)
            if near:
                for b in range(bands):
                    pairs = np.empty(len(rec), NEAR_PAIR)
                    pairs["key"], pairs["doc"] = rec["bands"][:, b], doc
                    scatter.add(f"near_{b:03d}", _top_bits(pairs["key"], near_bits), pairs)
            log.every(lambda: f"keys of {start + off + len(rec)}/{n} candidates scattered")
        start += count
    scatter.flush()
    flags = np.lib.format.open_memmap(os.path.join(scratch, "flags.npy"), "w+", np.uint8, (n,))
    exact_files = sorted(glob.glob(os.path.join(scratch, "exact_*.bin")))
    near_files = sorted(glob.glob(os.path.join(scratch, "near_*.bin")))
    total = len(exact_files) + len(near_files)
    # Exact first: a near duplicate is one that is not exact (the in-memory path's order).
    for k, path in enumerate(exact_files):
        log.every(lambda: f"{k}/{total} hash-range files sorted")
        p = np.fromfile(path, EXACT_PAIR)
        p = p[np.lexsort((p["doc"], p["lo"], p["hi"]))]
        same = (p["hi"][1:] == p["hi"][:-1]) & (p["lo"][1:] == p["lo"][:-1])
        flags[p["doc"][1:][same]] = EXACT
        os.remove(path)
    for k, path in enumerate(near_files, len(exact_files)):
        log.every(lambda: f"{k}/{total} hash-range files sorted")
        p = np.fromfile(path, NEAR_PAIR)
        p = p[(flags[p["doc"]] & EXACT) == 0]  # exact duplicates are not in the index
        p = p[np.lexsort((p["doc"], p["key"]))]
        docs = p["doc"][1:][p["key"][1:] == p["key"][:-1]]
        flags[docs] |= NEAR
        os.remove(path)
    flags.flush()
    log.say(f"exact duplicates {int(np.count_nonzero(flags & EXACT))}, near duplicates "
        f"{int(np.count_nonzero(flags == NEAR))}")
    return flags
