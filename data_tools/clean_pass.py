"""One cleaning pass's machinery, shared by data_tools.clean (one process, dedup in memory) and
data_tools.clean_shards (shards and their merge, dedup on disk): the rule order, the per-document
filters run in worker processes (`_results`, in input order), the run's settings (`Run`) and the
manifest pieces every mode writes.
"""

from __future__ import annotations

import collections
import gzip
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Iterable, Iterator

from data_tools.c4_lines import c4_filter, sentence_counter
from data_tools.clean_config import RULE_FIELDS, CleanConfig
from data_tools.clean_manifest import TOOL, Counts, file_hash
from data_tools.decontaminate import is_contaminated, load_eval_ngrams
from data_tools.errors import DataToolsError
from data_tools.gopher_quality import quality_failure, words_splitter
from data_tools.gopher_repetition import repetition_failure
from data_tools.inputs import RecordChunk, load_record
from data_tools.jsonl_reader import UnparsableLine
from data_tools.near_dedup import effective_threshold, signature
from data_tools.normalize import normalize

OUTPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
QUALITY_RULES = list(RULE_FIELDS)[:8]
REPETITION_RULES = list(RULE_FIELDS)[8:]


def rule_order(cfg: CleanConfig, decontaminate: bool = False) -> list[str]:
    """The rules this config checks, in the order they are checked (the manifest's order)."""
    on = [r for r, names in RULE_FIELDS.items() if any(getattr(cfg, n) is not None for n in names)]
    if cfg.c4_lines:
        on[:0] = ["c4_lorem_ipsum", "c4_curly_bracket", "c4_too_few_sentences"]
    if decontaminate and cfg.decontam_action == "drop":
        on.append("contaminated")
    return ["empty", *on, *(["exact_duplicate"] if cfg.exact_dedup else []),
            *(["near_duplicate"] if cfg.near_dedup else [])]


def _open_output(path: str, final: str):
    if final.endswith(".gz"):
        return gzip.open(path, "wb", compresslevel=6)
    if final.endswith(".zst"):
        import zstandard

        return zstandard.open(path, "wb")
    return open(path, "wb", buffering=1 << 20)


@dataclass
class _Doc:
    """One record of a chunk after the per-document work (done in a worker with --workers > 1)."""

    where: str
    skip: str | None = None  # a SKIP_REASONS-like reason: not a document at all
    size: int = 0  # UTF-8 bytes of the text as read
    rule: str | None = None  # the filter that removed it (dedup is decided later, in order)
    original: str = ""  # the text as read, for the manifest's sample (removed documents only)
    text: str = ""  # normalized (kept so far)
    record: dict | None = None
    changed: bool = False
    signature: bytes = b""  # MinHash signature (near dedup), of documents the filters kept
    contaminated: bool = False  # shares an n-gram with the evaluation texts (decontam_action="report")
    c4_lines_removed: int = 0


_W: dict = {}


def _init_worker(cfg: CleanConfig, text_key: str, eval_ngrams: frozenset[int] = frozenset()) -> None:
    rules = rule_order(cfg)
    _W.update(cfg=cfg, text_key=text_key, split=words_splitter(cfg.word_splitter), eval_ngrams=eval_ngrams,
              sentences=sentence_counter(cfg.word_splitter) if cfg.c4_lines else None,
              quality=any(r in rules for r in QUALITY_RULES), repetition=any(r in rules for r in REPETITION_RULES))


def _init_pool_worker(parent_pid: int, *initargs) -> None:
    """_init_worker in a worker process that leaves Ctrl-C to its parent and exits when orphaned
    (preprocess's workers do the same, for the reasons given there)."""
    from data_tools.preprocess import _exit_when_orphaned

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    _init_worker(*initargs)


def _record_skip(rec, key: str) -> str | None:
    if rec is None:
        return "blank_line"
    if not isinstance(rec, dict):
        return "not_an_object"
    if key not in rec:
        return "missing_key"
    if not isinstance(rec[key], str):
        return "non_string"
    return None if rec[key].strip() else "empty_input"


def _process(chunk: RecordChunk) -> list[_Doc]:
    """Normalize and filter every record of `chunk` (everything but dedup, which needs the order)."""
    cfg, key, out = _W["cfg"], _W["text_key"], []
    for i in range(len(chunk.records)):
        doc = _Doc(chunk.where(i))
        out.append(doc)
        try:
            rec = load_record(chunk, i)
        except UnparsableLine as e:
            doc.skip = e.reason
            continue
        doc.skip = _record_skip(rec, key)
        if doc.skip is not None:
            continue
        original = rec[key]
        doc.size = len(original.encode("utf-8", "surrogatepass"))
        text = normalize(original, cfg.unicode_form, cfg.fix_mojibake)
        doc.changed = text != original
        if not text.strip():
            doc.rule = "empty"
        elif cfg.c4_lines:
            text, doc.rule, doc.c4_lines_removed = c4_filter(text, cfg.c4_min_words_per_line, cfg.c4_min_sentences,
                                                             _W["sentences"])
            doc.rule = doc.rule or (None if text else "empty")
        if doc.rule is None and (_W["quality"] or _W["repetition"]):
            words = _W["split"](text)
            doc.rule = quality_failure(text, words, cfg) if _W["quality"] else None
            if doc.rule is None and _W["repetition"]:
                doc.rule = repetition_failure(text, words, cfg)
        if doc.rule is None and _W["eval_ngrams"] and is_contaminated(text, cfg.decontam_ngram, _W["eval_ngrams"]):
            if cfg.decontam_action == "drop":
                doc.rule = "contaminated"
            else:
                doc.contaminated = True
        if doc.rule is not None:
            doc.original = original
        else:
            rec[key] = doc.text = text
            doc.record = rec
            if cfg.near_dedup:
                doc.signature = signature(text, cfg.minhash_shingle_words, cfg.minhash_permutations, cfg.minhash_seed)
    return out


def _results(chunks: Iterable[RecordChunk], workers: int, cfg: CleanConfig, text_key: str,
             eval_ngrams: frozenset[int]) -> Iterator:
    """(chunk, its _Docs) in input order; `workers` processes with a bounded number in flight."""
    if workers <= 1:
        _init_worker(cfg, text_key, eval_ngrams)
        for c in chunks:
            yield c, _process(c)
        return
    # spawn, not fork, for preprocess's reason (a caller with torch's threads loaded)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_pool_worker,
                             initargs=(os.getpid(), cfg, text_key, eval_ngrams)) as pool:
        pending: collections.deque = collections.deque()
        try:
            for c in chunks:
                pending.append((c, pool.submit(_process, c)))
                if len(pending) >= 2 * workers + 1:
                    c0, f = pending.popleft()
                    yield c0, f.result()
            while pending:
                c0, f = pending.popleft()
                yield c0, f.result()
        except BrokenProcessPool:
            raise DataToolsError("clean: a worker process died (killed, out of memory or crashed); nothing was "
                                 "written; rerun, or with --workers 1 to see the failure") from None
        finally:
            for _, f in pending:
                f.cancel()


@dataclass
class Run:
    """One clean invocation, checked: what every mode (in memory, a shard, the merge) needs."""

    cfg: CleanConfig
    inputs: list
    output: str
    text_key: str
    quiet: bool
    log_interval: float
    workers: int
    decontaminate: list[str]
    eval_key: str
    t0: float

    @property
    def threshold(self) -> float:
        return effective_threshold(self.cfg.minhash_bands, self.cfg.minhash_rows)

    def eval_ngrams(self) -> tuple[frozenset[int], dict | None]:
        if not self.decontaminate:
            return frozenset(), None
        ngrams, decontam = load_eval_ngrams(self.decontaminate, self.eval_key, self.cfg.decontam_ngram,
                                            self.cfg.unicode_form)
        decontam.update(n=self.cfg.decontam_ngram, action=self.cfg.decontam_action)
        return ngrams, decontam

    def print_threshold(self) -> None:
        if self.cfg.near_dedup and not self.quiet:
            cfg = self.cfg
            print(f"clean: near dedup: MinHash of {cfg.minhash_shingle_words}-word shingles, "
                  f"{cfg.minhash_permutations} permutations = {cfg.minhash_bands} bands x {cfg.minhash_rows} rows: "
                  f"effective Jaccard threshold ~{self.threshold:.2f} ((1/b)^(1/r): pairs this similar are caught "
                  "half the time, 0.85+ almost always)", file=sys.stderr)

    def manifest(self, inputs_meta: list[dict], tmp_out: str, counts: Counts, decontam: dict | None,
                 **extra) -> dict:
        cfg = self.cfg
        return {
            "tool": TOOL,
            "config": cfg.as_dict(),
            "text_key": self.text_key,
            "inputs": inputs_meta,
            "output": {"path": self.output, "format": "jsonl", "bytes": os.path.getsize(tmp_out),
                       "xxh3_128": file_hash(tmp_out)},
            "documents": counts.docs,
            "bytes": counts.nbytes,
            "normalize": {"changed_documents": counts.changed},
            "c4_lines": {"lines_removed": counts.c4_lines_removed} if cfg.c4_lines else None,
            "near_dedup": {"effective_threshold": round(self.threshold, 4)} if cfg.near_dedup else None,
            "decontamination": decontam and {**decontam, **({"reported": counts.reported.as_dict()["contaminated"]}
                                                           if cfg.decontam_action == "report" else {})},
            "skipped": counts.skipped,
            "first_skipped": counts.first_skipped,
            "rules": counts.tallies.as_dict(),
            **extra,
            "seconds": round(time.perf_counter() - self.t0, 3),
        }


def inputs_meta(inputs) -> list[dict]:
    return [{"path": f.path, "format": f.format, "bytes": os.path.getsize(f.path), "xxh3_128": file_hash(f.path)}
            for f in inputs]


def summary_line(m: dict, where: str) -> str:
    d = m["documents"]
    removed = ", ".join(f"{r} {t['documents']}" for r, t in m["rules"].items() if t["documents"]) or "none"
    skipped = ", ".join(f"{n} {r}" for r, n in sorted(m["skipped"].items())) or "none"
    return (f"clean: {d['in']} documents, kept {d['kept']} ({100 * d['kept'] / max(d['in'], 1):.1f}%), "
            f"removed: {removed}; skipped lines: {skipped}; manifest {where}; {m['seconds']:.1f}s")
