"""Tokenize jsonl, parquet or Arrow documents into Megatron `.bin`/`.idx` datasets.

    python -m data_tools.preprocess --input corpus.jsonl --output-prefix data/stdlib \\
        --tokenizer-model tok.model --append-eod --workers 2 [--split-sentences]
    python -m data_tools.preprocess ... --tokenizer-type HuggingFaceTokenizer --tokenizer-model hf_tok_dir/

Writes `{prefix}_{key}_document.bin/.idx` (`_sentence` with --split-sentences) per json key,
through megatron-core's `IndexedDatasetBuilder`, so Megatron-LM / Megatron-DeepSpeed read them.

How it is fast: the main process reads raw lines in ~1 MB chunks; N worker processes each parse
a chunk (orjson), batch-encode it (sentencepiece straight into numpy arrays, or a Hugging Face
tokenizer's Rust backend: data_tools.hf_tokenizer), append EOD and return one flat token array per chunk; the main process writes chunks in input order
with one write each. No per-token Python work anywhere, and at most a few chunks are in flight,
so memory does not grow with the corpus (only the index's per-sequence lengths do, as in
megatron-core itself).

Bad lines (malformed JSON, non-UTF-8, not an object, missing key, non-string value, empty
document) are skipped and counted; `--strict` makes the first one fatal. Bad paths or tokenizer
files fail with one line before any work. The EOD token is counted in the lengths.

`--input` also takes parquet files, Arrow / `datasets` save_to_disk folders, folders and
quoted globs (data_tools.inputs); their cells are read by data_tools.columnar_reader and
skipped like bad lines (null, not a string, not UTF-8, empty), reported as FILE:ROW from 0.

Hugging Face tokenizers (`--tokenizer-type HuggingFaceTokenizer`, or a directory with "auto"):
each document is exactly `AutoTokenizer.from_pretrained(DIR)(text)["input_ids"]`, BOS included
when the tokenizer adds one; `--append-eod` appends its eos token. With `--split-sentences` the
tokenizer's special tokens frame the document once (leading ones before its first sentence,
trailing ones after its last), not every sentence.

An input written by `data_tools.clean` has its manifest beside it (`FILE.manifest.json`):
preprocess checks that the file is what the manifest says it wrote and names the manifest and its
content hash in `{prefix}.provenance.json` beside the `.idx`, so the tokens name their cleaning.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from data_tools.errors import DataToolsError, run_cli
from data_tools.inputs import check_inputs, iter_chunks, parse_chunk, resolve_inputs
from data_tools.io_utils import check_output_prefix
from data_tools.progress import Progress
from data_tools.jsonl_reader import SKIP_REASONS, Chunk, Skip, total_input_bytes
from data_tools.hf_tokenizer import HUGGINGFACE, TOKENIZER_TYPES
from data_tools.spm import TokenizerError

FIRST_SKIPS_KEPT = 5  # line numbers reported per skip reason


@dataclass
class Summary:
    """What a preprocess run did; `str()` is the final summary line."""

    outputs: list[str] = field(default_factory=list)  # one prefix per json key
    documents: int = 0
    sequences: int = 0
    tokens: int = 0
    input_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> ["file:line", ...]
    seconds: float = 0.0

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        where = "; ".join(f"{r} at {', '.join(v)}" for r, v in sorted(self.first_skipped.items()))
        return (f"preprocess: {self.documents} documents, {self.sequences} sequences, {self.tokens} tokens; "
                f"skipped lines: {skipped}{' (' + where + ')' if where else ''}; {self.seconds:.1f}s")


@dataclass
class _EncodedChunk:
    """One chunk, tokenized: per json key (tokens, sequence lengths, sequences per document)."""

    keys: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    documents: int
    skips: list[Skip]
    input_pos: int
    path: str


# -- worker side ------------------------------------------------------------------------------
_W: dict = {}  # per-process state set by _init_worker: sp or hf, splitter, settings


def _init_worker(tokenizer: str | dict, json_keys: Sequence[str], append_eod: bool, split_sentences: bool,
                 dtype: str, threads: int) -> None:
    """`tokenizer`: a sentencepiece model path, or a Hugging Face FastEncoder spec (a dict)."""
    _W.update(json_keys=tuple(json_keys), append_eod=append_eod, dtype=np.dtype(dtype), threads=threads,
              splitter=None, sp=None, hf=None)
    if isinstance(tokenizer, dict):
        from data_tools.hf_tokenizer import FastEncoder

        _W["hf"] = FastEncoder(tokenizer)
        eos = tokenizer["eos_id"]
    else:
        from data_tools.spm import load_sentencepiece

        _W["sp"] = load_sentencepiece(tokenizer)
        eos = _W["sp"].eos_id()
    if split_sentences:
        from data_tools.sentences import SentenceSplitter

        _W["splitter"] = SentenceSplitter()
    _W["eod"] = np.array([-1 if eos is None else eos], dtype=np.int32)


def _init_pool_worker(parent_pid: int, *initargs) -> None:
    """_init_worker in a worker process, which also must not outlive or outshout its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    # One Rust thread per worker for Hugging Face tokenizers (read when its pool first starts):
    # the processes are the parallelism, as with sentencepiece's num_threads=1.
    os.environ["RAYON_NUM_THREADS"] = str(initargs[-1])
    _init_worker(*initargs)


def _exit_when_orphaned(parent_pid: int) -> None:
    # A killed parent (SIGKILL, OOM killer) cannot stop its workers, and a spawned worker waiting
    # for work holds both ends of its queue's pipe, so it would wait forever: watch instead.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _encode_chunk(chunk: Chunk) -> _EncodedChunk:
    parsed = parse_chunk(chunk, _W["json_keys"])  # jsonl lines or parquet/Arrow cells
    sp, hf, splitter, eod, dtype = _W["sp"], _W["hf"], _W["splitter"], _W["eod"], _W["dtype"]
    n_docs = len(parsed.lines)
    per_key = []
    keep = np.ones(n_docs, dtype=bool)
    for texts in parsed.texts:
        if splitter is not None:
            pieces = [splitter.split(t) for t in texts]
            flat = [s for p in pieces for s in p]
            counts = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=n_docs)
        else:
            flat, counts = texts, np.ones(n_docs, dtype=np.int64)
        if not flat:
            ids = []
        elif hf is not None:  # one Rust call per chunk
            ids = hf.encode_documents(flat, counts) if splitter is not None else hf.encode(flat)
        else:  # one C++ call per chunk; numpy output avoids a Python int per token.
            ids = sp.encode(flat, out_type="numpy", num_threads=_W["threads"])
        per_key.append((ids, counts))
        # A document is empty when all its sequences are (byte fallback makes this rare).
        doc_ntok = np.add.reduceat(np.fromiter(map(len, ids), np.int64, len(ids)), _starts(counts)) if flat else np.zeros(0)
        keep &= doc_ntok > 0 if n_docs else keep
    skips = list(parsed.skips)
    if not keep.all():
        for d in np.flatnonzero(~keep):
            skips.append(Skip(chunk.path, parsed.lines[d], "empty", "(after tokenization)"))
        skips.sort(key=lambda s: s.line)
    out = []
    for ids, counts in per_key:
        parts, lengths, seq_counts = [], [], []
        pos = 0
        for d in range(n_docs):
            seqs = ids[pos : pos + counts[d]]
            pos += counts[d]
            if not keep[d]:
                continue
            seqs = [s for s in seqs if len(s)]
            lens = [len(s) for s in seqs]
            parts.extend(seqs)
            if _W["append_eod"]:
                parts.append(eod)
                lens[-1] += 1  # EOD belongs to the last sequence and is counted in its length
            lengths.extend(lens)
            seq_counts.append(len(seqs))
        tokens = np.concatenate(parts, dtype=dtype, casting="unsafe") if parts else np.zeros(0, dtype)
        out.append((tokens, np.asarray(lengths, np.int32), np.asarray(seq_counts, np.int64)))
    return _EncodedChunk(out, int(keep.sum()), skips, chunk.input_pos, chunk.path)


def _starts(counts: np.ndarray) -> np.ndarray:
    """Start offset of each document's sequences (for np.add.reduceat; counts are >= 1)."""
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


# -- main side --------------------------------------------------------------------------------
def _ordered_results(chunks: Iterable[Chunk], workers: int, initargs: tuple) -> Iterable[_EncodedChunk]:
    """Encode chunks in `workers` processes, yielding results in input order with a bounded
    number in flight (Pool.imap would read the whole input ahead into its queue)."""
    if workers <= 1:
        _init_worker(*initargs)
        yield from map(_encode_chunk, chunks)
        return
    # spawn, not fork: a caller that has torch loaded (a training run building its corpus, a test
    # session) has OpenMP threads, and a forked child of a threaded process can crash; one did,
    # in the garbage collector (CI, 2026-12). A process pool, not multiprocessing.Pool: when a
    # worker dies, Pool waits forever for its result; the executor raises BrokenProcessPool.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_pool_worker,
                             initargs=(os.getpid(), *initargs)) as pool:
        pending: collections.deque = collections.deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_encode_chunk, chunk))
                if len(pending) >= 2 * workers + 1:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise DataToolsError("preprocess: a worker process died (killed, out of memory or crashed); "
                                 "nothing was published; rerun, or with --workers 1 to see the failure") from None
        finally:
            for f in pending:  # on error / Ctrl-C: drop queued chunks instead of encoding them
                f.cancel()


def _load_tokenizer(model_path: str | os.PathLike, append_eod: bool, tokenizer_type: str = "auto"):
    """(vocabulary size, what _init_worker takes) for a sentencepiece .model or a Hugging Face
    directory; one-line DataToolsError for a bad path, type or missing eos."""
    from data_tools.hf_tokenizer import tokenizer_type as resolve_type

    model_path = os.fspath(model_path)
    try:
        if resolve_type(model_path, tokenizer_type) == HUGGINGFACE:
            return _load_hf_tokenizer(model_path, append_eod)
        from data_tools.spm import load_sentencepiece

        sp = load_sentencepiece(model_path)
    except TokenizerError as e:
        raise DataToolsError(str(e)) from None
    if append_eod and sp.eos_id() < 0:
        raise DataToolsError(f"{model_path}: tokenizer has no end-of-document (eos) token; "
                             "train it with `python -m data_tools.train_tokenizer`")
    return sp.get_piece_size(), model_path


def _load_hf_tokenizer(path: str, append_eod: bool) -> tuple[int, dict]:
    from data_tools.hf_tokenizer import FastEncoder, check_fast_encoder, fast_encoder_spec, load_hf_tokenizer, special_id

    tok = load_hf_tokenizer(path)
    eos = special_id(tok, "eos")
    if append_eod and eos is None:
        raise DataToolsError(f"{path}: tokenizer has no eos token for --append-eod; set eos_token in "
                             "tokenizer_config.json, or drop --append-eod")
    spec = {**fast_encoder_spec(tok), "eos_id": eos}
    encoder = FastEncoder(spec)
    check_fast_encoder(tok, encoder, path)
    if append_eod and len(encoder.suffix) and encoder.suffix[-1] == eos:
        raise DataToolsError(f"{path}: its post-processor already ends every text with the eos token "
                             f"{tok.eos_token}; drop --append-eod (it would add a second one)")
    return len(tok), spec


def cleaning_manifests(paths: Sequence[str]) -> dict[str, dict]:
    """{input: {path, xxh3_128} of its data_tools.clean manifest} for the inputs clean wrote; a
    one-line DataToolsError for an input changed since (data_tools.clean_manifest.manifest_of)."""
    from data_tools.clean_manifest import manifest_of

    return {p: m for p in paths if (m := manifest_of(p)) is not None}


def provenance_path(prefix: str) -> str:
    return prefix + ".provenance.json"


def write_provenance(prefix: str, cleaned: dict[str, dict]) -> None:
    """`{prefix}.provenance.json` naming the cleaning manifests (and their hashes) of the inputs,
    written before the pair is published; a stale one from an earlier run is removed."""
    path = provenance_path(prefix)
    if os.path.exists(path):
        os.remove(path)
    if cleaned:
        from data_tools.clean_manifest import write_json
        from data_tools.io_utils import atomic_outputs

        with atomic_outputs([path]) as (tmp,):
            write_json(tmp, {"cleaning_manifests": cleaned})


def output_prefixes(output_prefix: str, json_keys: Sequence[str], split_sentences: bool) -> list[str]:
    level = "sentence" if split_sentences else "document"
    return [f"{output_prefix}_{key}_{level}" for key in json_keys]


def preprocess(
    input_paths: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    tokenizer_model: str | os.PathLike,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = True,
    workers: int = 2,
    split_sentences: bool = False,
    strict: bool = False,
    quiet: bool = False,
    log_interval: float = 1.0,
    tokenizer_type: str = "auto",
) -> Summary:
    """Tokenize `input_paths` into `{output_prefix}_{key}_{document|sentence}.bin/.idx`.

    `input_paths`: jsonl / parquet / Arrow files, folders and globs (data_tools.inputs).

    `tokenizer_model` is a sentencepiece .model or a Hugging Face tokenizer directory
    (`tokenizer_type`: "auto", "SentencePieceTokenizer" or "HuggingFaceTokenizer").

    Raises DataToolsError (one line) for bad paths / tokenizer before doing any work, and for
    the first bad line when `strict`. Returns the run's Summary.
    """
    t0 = time.perf_counter()
    inputs = resolve_inputs(input_paths)
    paths = [f.path for f in inputs]
    output_prefix = check_output_prefix(output_prefix)
    json_keys = tuple(json_keys)
    if not json_keys or len(set(json_keys)) != len(json_keys):
        raise DataToolsError(f"--json-keys {list(json_keys)}: give one or more distinct keys")
    if workers < 1:
        raise DataToolsError(f"--workers {workers}: must be >= 1")
    check_inputs(inputs, json_keys)  # parquet/Arrow schemas: a missing column is one line now
    cleaned = cleaning_manifests(paths)  # inputs data_tools.clean wrote: recorded beside each .idx
    vocab_size, worker_tokenizer = _load_tokenizer(tokenizer_model, append_eod, tokenizer_type)
    from data_tools.indexed_writer import BinIdxWriter, optimal_dtype

    dtype = np.dtype(optimal_dtype(vocab_size))
    summary = Summary(outputs=output_prefixes(output_prefix, json_keys, split_sentences),
                      input_bytes=total_input_bytes(paths))
    initargs = (worker_tokenizer, json_keys, append_eod, split_sentences, dtype.str, 1)
    writers: list[BinIdxWriter] = []
    results = None
    progress = Progress("preprocess", summary.input_bytes, quiet, log_interval)
    try:
        writers = [BinIdxWriter(p, dtype) for p in summary.outputs]
        results = _ordered_results(iter_chunks(inputs, json_keys), workers, initargs)
        for res in results:
            for skip in res.skips:
                if strict:
                    raise DataToolsError(f"{skip.message()} (--strict; fix the line or drop --strict to skip it)")
                summary.skipped[skip.reason] = summary.skipped.get(skip.reason, 0) + 1
                first = summary.first_skipped.setdefault(skip.reason, [])
                if len(first) < FIRST_SKIPS_KEPT:
                    first.append(f"{skip.path}:{skip.line}")
            for w, (tokens, lengths, counts) in zip(writers, res.keys):
                w.add_documents(tokens, lengths, counts)
            summary.documents += res.documents
            progress.update(res.path, res.input_pos, summary.documents)
        if summary.documents == 0:
            raise DataToolsError(f"{paths[0]}: no usable documents in the input "
                                 f"(skipped: {summary.skipped or 'nothing to read'})")
        for w in writers:
            write_provenance(w.prefix, cleaned)
            w.finalize()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        if results is not None:
            results.close()  # stops the worker pool now, not when the traceback is freed
        progress.close()
    summary.sequences = writers[0].sequences
    summary.tokens = sum(w.tokens for w in writers)
    summary.seconds = time.perf_counter() - t0
    if not quiet:
        print(summary, file=sys.stderr)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help=".jsonl(.gz/.zst), .parquet, .arrow files; "
                   "folders of them (datasets save_to_disk too); quoted globs")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX_KEY_document.bin/.idx per key")
    p.add_argument("--tokenizer-model", required=True,
                   help="sentencepiece .model, or a Hugging Face tokenizer directory (tokenizer.json)")
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="auto",
                   help="auto: a directory is HuggingFaceTokenizer, a file SentencePieceTokenizer")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="json keys, or parquet/Arrow columns")
    p.add_argument("--append-eod", action="store_true",
                   help="end every document with the tokenizer's eos, e.g. </s> (counted in lengths)")
    p.add_argument("--split-sentences", action="store_true", help="one sequence per sentence (nltk Punkt, offline)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    p.add_argument("--log-interval", type=float, default=1.0,
                   help="seconds between progress updates (off a terminal: one plain line each)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    preprocess(a.input, a.output_prefix, a.tokenizer_model, a.json_keys, a.append_eod, a.workers,
               a.split_sentences, a.strict, a.quiet, a.log_interval, a.tokenizer_type)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
