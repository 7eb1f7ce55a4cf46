"""Clean a corpus as MassiveText (Gopher) was cleaned, before `preprocess`.

    python -m data_tools.clean --input raw/ 'more/*.parquet' --output clean/corpus.jsonl \\
        [--text-key text] [--rules rules.toml] [--set min_words=20] [--off stop_words] [--off repetition]

Reads what preprocess reads (jsonl(.gz/.zst), parquet, Arrow, folders, quoted globs; through
data_tools.inputs) and, per document, in this order:
  1. normalize the text (data_tools.normalize: ftfy mojibake repair, NFC, line endings, control
     characters, trailing whitespace); a document left empty is removed ("empty");
  2. optionally C4's line filters (data_tools.c4_lines; --set c4_lines=true); Gopher's quality
     filters (data_tools.gopher_quality), then its repetition filters (data_tools.gopher_repetition):
     the first rule failed removes the document;
  3. with --decontaminate EVAL...: documents sharing a word 13-gram with the evaluation texts are
     removed ("contaminated"; data_tools.decontaminate), or listed in the manifest (report);
  4. exact dedup of what is left (data_tools.dedup): the first occurrence in input order is kept
     ("exact_duplicate");
  5. near dedup (data_tools.near_dedup): MinHash LSH over word 5-gram shingles, 14 bands x 8 rows
     (effective Jaccard threshold ~0.72, printed before the run); the first document of each
     cluster is kept ("near_duplicate").
The paper's order: quality and repetition filtering before document dedup, so a removed
document's copies are counted under the rule that removed it.

Writes the kept records as jsonl (`.jsonl`, or compressed by the output's name: `.jsonl.gz`,
`.jsonl.zst`): every field of the input record (parquet/Arrow columns as keys) with the text
field replaced by its normalized text; and OUTPUT.manifest.json (data_tools.clean_manifest):
the rules, content hashes of inputs and output, documents and bytes in/kept/removed per rule and
a seeded sample of removed documents per rule. Both are written under temp names and renamed when
complete; bad inputs and rules are one line each before any work, and nothing is written.
Lines that are not documents (bad JSON, no text field, ...) are skipped and counted, as preprocess
skips them.

Dedup needs every earlier document, so by default its indexes live in memory (~1.4 KB a kept
document). `--work-dir W` keeps the keys on disk instead and dedups them in bounded memory, with
the same result; the input files can then be cut into shards run anywhere (`--shard I/N`, a SLURM
array task: slurm/clean.sh) and merged (`--merge`): data_tools.clean_shards.
"""

from __future__ import annotations

import argparse
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
from typing import Iterable, Iterator, Sequence

import orjson

from data_tools.c4_lines import c4_filter, sentence_counter
from data_tools.clean_config import RULE_FIELDS, CleanConfig, build_config
from data_tools.clean_manifest import TOOL, Counts, file_hash, manifest_path, write_json
from data_tools.decontaminate import is_contaminated, load_eval_ngrams
from data_tools.dedup import ExactDedup
from data_tools.errors import DataToolsError, run_cli
from data_tools.gopher_quality import quality_failure, words_splitter
from data_tools.gopher_repetition import repetition_failure
from data_tools.inputs import RecordChunk, check_inputs, input_bytes, iter_records, load_record, resolve_inputs
from data_tools.io_utils import atomic_outputs, check_output_prefix
from data_tools.jsonl_reader import UnparsableLine
from data_tools.near_dedup import NearDedup, effective_threshold, signature
from data_tools.normalize import normalize
from data_tools.progress import Progress

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


def _check_output(output: str, inputs) -> str:
    output = check_output_prefix(output)
    if not output.endswith(OUTPUT_SUFFIXES):
        raise DataToolsError(f"--output {output}: clean writes jsonl; name it .jsonl, .jsonl.gz or .jsonl.zst")
    real = os.path.realpath(output)
    for f in inputs:
        if os.path.realpath(f.path) in (real, os.path.realpath(manifest_path(output))):
            raise DataToolsError(f"--output {output}: is also an input; write the cleaned corpus elsewhere")
    return output


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


def check_run(input_paths, output, cfg: CleanConfig, text_key: str) -> tuple[list, str]:
    """The resolved inputs and the output, checked with what the rules need (one line each)."""
    bad = cfg.validate()
    if bad:
        raise DataToolsError("bad cleaning rules:\n  " + "\n  ".join(bad) if len(bad) > 1 else bad[0])
    inputs = resolve_inputs(input_paths)
    output = _check_output(os.fspath(output), inputs)
    check_inputs(inputs, [text_key])  # parquet/Arrow: a missing column is one line now
    try:
        words_splitter(cfg.word_splitter)("a b")
    except ImportError as e:
        raise DataToolsError(f"word_splitter={cfg.word_splitter}: {e}") from None
    if cfg.near_dedup:
        try:
            import rensa  # noqa: F401
        except ImportError:
            raise DataToolsError("near_dedup needs rensa (pip install rensa), or --off near_dedup") from None
    return inputs, output


def clean(input_paths: Sequence[str | os.PathLike], output: str | os.PathLike, cfg: CleanConfig | None = None,
          text_key: str = "text", quiet: bool = False, log_interval: float = 1.0, workers: int = 1,
          decontaminate: Sequence[str | os.PathLike] = (), eval_key: str = "text",
          work_dir: str | os.PathLike | None = None, shards: int = 1, shard: int | None = None, merge: bool = False,
          memory_mb: float = 1024) -> dict:
    """Clean `input_paths` into `output` (jsonl) and `output`.manifest.json; returns the manifest.
    `decontaminate`: evaluation inputs (any format) whose word n-grams documents must not share.
    `work_dir`: dedup from keys on disk in `memory_mb`, the input cut into `shards` runs of files
    (data_tools.clean_shards); `shard` I: only that shard (returns its marker), `merge`: only the merge.
    Raises a one-line DataToolsError for bad inputs, rules or output before reading a document."""
    t0 = time.perf_counter()
    cfg = cfg or CleanConfig()
    bad = cfg.validate() + ([f"--workers {workers}: must be >= 1"] if workers < 1 else [])
    if work_dir is None and (shard is not None or merge or shards != 1):
        bad.append("--shard, --shards and --merge need --work-dir (where shards leave their work for the merge)")
    if memory_mb <= 0:
        bad.append(f"--memory-mb {memory_mb}: must be > 0")
    if bad:
        raise DataToolsError("bad cleaning rules:\n  " + "\n  ".join(bad) if len(bad) > 1 else bad[0])
    inputs, output = check_run(input_paths, output, cfg, text_key)
    run = Run(cfg, inputs, output, text_key, quiet, log_interval, workers, [os.fspath(p) for p in decontaminate],
              eval_key, t0)
    if work_dir is not None:
        from data_tools.clean_shards import run_on_disk

        return run_on_disk(run, os.fspath(work_dir), shards, shard, merge, memory_mb)
    return _clean_in_memory(run)


def _clean_in_memory(run: Run) -> dict:
    """One pass: filter, then dedup against indexes in memory (~1 KB a kept document), in input order."""
    cfg = run.cfg
    eval_ngrams, decontam = run.eval_ngrams()
    counts = Counts(rule_order(cfg, bool(run.decontaminate)), cfg)
    seen = ExactDedup() if cfg.exact_dedup else None
    near = NearDedup(cfg.minhash_bands, cfg.minhash_rows) if cfg.near_dedup else None
    run.print_threshold()
    progress = Progress("clean", input_bytes(run.inputs), run.quiet, run.log_interval)
    final = [run.output, manifest_path(run.output)]
    results = None
    try:
        with atomic_outputs(final) as (tmp_out, tmp_manifest):
            with _open_output(tmp_out, run.output) as out:
                results = _results(iter_records(run.inputs, None), run.workers, cfg, run.text_key, eval_ngrams)
                for chunk, processed in results:
                    lines = []
                    for d in processed:
                        if not counts.take(d):
                            continue
                        if seen is not None and seen.is_duplicate(d.text):
                            counts.remove("exact_duplicate", d.where, d.text, d.size)
                        elif near is not None and near.is_duplicate(d.signature):
                            counts.remove("near_duplicate", d.where, d.text, d.size)
                        else:
                            counts.keep(len(d.text.encode("utf-8")))
                            lines.append(orjson.dumps(d.record, default=str, option=orjson.OPT_APPEND_NEWLINE))
                    out.write(b"".join(lines))
                    progress.update(chunk.path, chunk.input_pos, counts.docs["in"])
            counts.check_not_empty(run.inputs[0].path)
            manifest = run.manifest(inputs_meta(run.inputs), tmp_out, counts, decontam)
            write_json(tmp_manifest, manifest)
    finally:
        if results is not None:
            results.close()  # stops the worker pool now
        progress.close()
    if not run.quiet:
        print(summary_line(manifest, final[1]), file=sys.stderr)
    return manifest


def summary_line(m: dict, where: str) -> str:
    d = m["documents"]
    removed = ", ".join(f"{r} {t['documents']}" for r, t in m["rules"].items() if t["documents"]) or "none"
    skipped = ", ".join(f"{n} {r}" for r, n in sorted(m["skipped"].items())) or "none"
    return (f"clean: {d['in']} documents, kept {d['kept']} ({100 * d['kept'] / max(d['in'], 1):.1f}%), "
            f"removed: {removed}; skipped lines: {skipped}; manifest {where}; {m['seconds']:.1f}s")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.clean", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help=".jsonl(.gz/.zst), .parquet, .arrow files; "
                   "folders of them (datasets save_to_disk too); quoted globs")
    p.add_argument("--output", required=True, help="the kept documents, .jsonl(.gz/.zst); "
                   "OUTPUT.manifest.json is written beside it")
    p.add_argument("--text-key", default="text", help="the json key (parquet/Arrow column) holding the text")
    p.add_argument("--decontaminate", nargs="+", default=[], metavar="EVAL",
                   help="evaluation texts (any --input format): documents sharing a word 13-gram with them are "
                   "removed (--set decontam_ngram=N, --set decontam_action=report to only list them)")
    p.add_argument("--eval-key", default="text", help="the key (column) of the evaluation texts")
    p.add_argument("--rules", help="a TOML file of CleanConfig fields (data_tools/clean_config.py), "
                   "top level or under [clean]")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="one CleanConfig field, e.g. min_words=20, max_words=none, unicode_form=NFKC (repeatable)")
    p.add_argument("--off", action="append", default=[], metavar="RULE",
                   help="switch off a rule (e.g. stop_words, dup_line_frac), a group (quality, repetition), "
                   "exact_dedup or fix_mojibake (repeatable)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes normalizing and filtering (dedup and writing stay in order in this one)")
    p.add_argument("--work-dir", help="dedup from keys on disk in bounded memory, with the candidates and keys "
                   "kept here (data_tools/clean_shards.py); reruns skip finished shards")
    p.add_argument("--shards", type=int, default=1, help="with --work-dir: cut the input files into N shards")
    p.add_argument("--shard", metavar="I/N", help="with --work-dir: run shard I of N only (0-based; a SLURM array "
                   "task: slurm/clean.sh), then the merge with --merge")
    p.add_argument("--merge", action="store_true", help="with --work-dir: only the merge of --shards finished "
                   "shards (cross-shard exact and near dedup, the output and its manifest)")
    p.add_argument("--memory-mb", type=float, default=1024,
                   help="with --work-dir: memory the merge's dedup may use for its sorts and buffers")
    p.add_argument("--count-inputs", action="store_true",
                   help="check the rules, inputs and output as a run would, print the number of input files, "
                   "write nothing (slurm/clean.sh sizes its array with it)")
    p.add_argument("--log-interval", type=float, default=1.0,
                   help="seconds between progress updates (off a terminal: one plain line each)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    cfg = build_config(a.rules, a.set, a.off)
    shards, shard = a.shards, None
    if a.shard is not None:
        try:
            shard, shards = (int(x) for x in a.shard.split("/"))
        except ValueError:
            raise DataToolsError(f"--shard {a.shard}: I/N, e.g. --shard 3/8 (shard 3 of 0..7)") from None
    if a.count_inputs:
        print(len(check_run(a.input, a.output, cfg, a.text_key)[0]))
        return 0
    clean(a.input, a.output, cfg, a.text_key, a.quiet, a.log_interval, a.workers, a.decontaminate, a.eval_key,
          a.work_dir, shards, shard, a.merge, a.memory_mb)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
