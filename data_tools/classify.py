"""Tokenize labelled jsonl (or parquet, Arrow) into Megatron `.bin`/`.idx` data for BERT sequence classification.

    python -m data_tools.classify --input train.jsonl --output-prefix data/mytask --tokenizer-model TOK \\
        [--tokenizer-type HuggingFaceTokenizer] [--label-set data/other_cls_document_labels.json]

Each line is `{"text": "...", "label": "spam"}` (or an int label), with an optional second segment
`"text_pair": "..."`; other keys are ignored. Writes, one document per sample (one sequence for
the text, a second one for text_pair), no special tokens (training frames them as
`[CLS] text [SEP] text_pair [SEP]` and truncates to data.seq_length):

    PREFIX_cls_document.bin/.idx             token ids (give this prefix as data.paths)
    PREFIX_cls_document_labels.npy           the side file: int32 class id per sample
    PREFIX_cls_document_labels.json          the label set: {"labels": [...], "counts": [...], ...};
                                             class id i is labels[i] (sorted; ints or strings as given)

All labels of a file must be of one type (all strings or all ints). `--label-set` reuses another
output's label set (a separate validation file must number its classes the same way); without it
the set is every label seen, and a file with only one class is refused. Any bad line (malformed
JSON, missing or empty text, missing label, a label that is not a string or int, mixed label
types, a label outside --label-set) stops the run with one line naming FILE:LINE, and nothing is
written (temp files, renamed only when complete); blank lines are skipped. Parquet/Arrow rows (numbered from 0) are read as the same records from
their `text`, `label` (and `text_pair`) columns; a null text_pair is no pair.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import orjson

from data_tools.errors import DataToolsError, run_cli
from data_tools.hf_tokenizer import TOKENIZER_TYPES
from data_tools.inputs import RecordChunk, input_bytes, iter_records, load_record, resolve_inputs
from data_tools.io_utils import atomic_outputs, check_output_prefix
from data_tools.jsonl_reader import UnparsableLine
from data_tools.progress import Progress
from data_tools.spm import TokenizerError


def output_prefix_of(output_prefix: str) -> str:
    """The token prefix `classify` writes for `output_prefix` (what data.paths takes)."""
    return f"{output_prefix}_cls_document"


def labels_path(tokens_prefix: str) -> str:
    """The per-sample class-id side file of a classification token prefix."""
    return tokens_prefix + "_labels.npy"


def label_set_path(tokens_prefix: str) -> str:
    """The label-set file of a classification token prefix."""
    return tokens_prefix + "_labels.json"


def read_label_set(path: str) -> list:
    """The `labels` list of a label-set json (one-line DataToolsError if it is not one)."""
    try:
        with open(path, "rb") as f:
            labels = orjson.loads(f.read())["labels"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataToolsError(f"{path}: not a label set written by data_tools.classify ({type(e).__name__})") from None
    if not isinstance(labels, list) or len(labels) < 2 or len({type(v) for v in labels}) != 1:
        raise DataToolsError(f"{path}: 'labels' must list 2 or more labels of one type")
    return labels


@dataclass
class ClassifySummary:
    output: str = ""
    samples: int = 0
    tokens: int = 0
    pairs: int = 0  # samples with a text_pair
    blank_lines: int = 0
    labels: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        classes = ", ".join(f"{lab!r}: {n}" for lab, n in zip(self.labels, self.counts))
        return (f"classify: {self.samples} samples ({self.pairs} with text_pair), {self.tokens} tokens, "
                f"{len(self.labels)} classes ({classes}); {self.blank_lines} blank lines; {self.seconds:.1f}s")


class _Encoder:
    """Text -> ids without special tokens, for a sentencepiece model or a Hugging Face tokenizer."""

    def __init__(self, path: str, requested: str):
        from data_tools.hf_tokenizer import HUGGINGFACE, load_hf_tokenizer, tokenizer_type

        self.hf = self.sp = None
        if tokenizer_type(path, requested) == HUGGINGFACE:
            self.hf = load_hf_tokenizer(path)
            self.vocab_size = len(self.hf)
        else:
            from data_tools.spm import load_sentencepiece

            self.sp = load_sentencepiece(path)
            self.vocab_size = self.sp.get_piece_size()

    def ids(self, texts: list[str]) -> list[list[int]]:
        if self.hf is not None:
            return [list(x) for x in self.hf(texts, add_special_tokens=False)["input_ids"]]
        return self.sp.encode(texts)


RECORD_KEYS = ("text", "text_pair", "label")  # a parquet/Arrow file's other columns are not read


def _record(chunk: RecordChunk, i: int, where: str) -> tuple[str, str | None, object]:
    """(text, text_pair or None, label) of record i, or a one-line DataToolsError naming `where`."""
    fix = "fix the line (nothing was written)"
    try:
        rec = load_record(chunk, i)
    except UnparsableLine as e:
        raise DataToolsError(f"{where}: {e}; {fix}") from None
    if not isinstance(rec, dict):
        raise DataToolsError(f"{where}: a line must be a JSON object with 'text' and 'label'; {fix}")
    for key in ("text", "label"):
        if key not in rec:
            raise DataToolsError(f"{where}: missing key {key!r}; {fix}")
    text, pair, label = rec["text"], rec.get("text_pair"), rec["label"]
    if not isinstance(text, str) or not text.strip():
        raise DataToolsError(f"{where}: 'text' must be a non-empty string, not {_shown(text)}; {fix}")
    if pair is not None and not isinstance(pair, str):
        raise DataToolsError(f"{where}: 'text_pair' must be a string, not {type(pair).__name__}; {fix}")
    # bool is an int in Python, and JSON true/false as class names is almost surely a mistake.
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataToolsError(f"{where}: 'label' must be a string or an integer, not {_shown(label)}; {fix}")
    return text, pair or None, label


def _shown(value) -> str:
    return "an empty string" if value == "" else "null" if value is None else type(value).__name__


def classify_preprocess(input_paths: Sequence[str], output_prefix: str, tokenizer_model: str,
                        tokenizer_type: str = "auto", label_set: str | None = None,
                        quiet: bool = False, log_interval: float = 1.0) -> ClassifySummary:
    """Write the token pair, the class-id side file and the label set for `input_paths`; see the
    module docstring (inputs: jsonl, parquet, Arrow, folders, globs: data_tools.inputs). Raises DataToolsError (one line) for bad arguments and the first bad line."""
    t0 = time.perf_counter()
    inputs = resolve_inputs(input_paths)
    paths = [f.path for f in inputs]
    output_prefix = check_output_prefix(output_prefix)
    fixed = read_label_set(label_set) if label_set else None
    try:
        enc = _Encoder(os.fspath(tokenizer_model), tokenizer_type)
    except TokenizerError as e:
        raise DataToolsError(str(e)) from None
    from data_tools.indexed_writer import BinIdxWriter, optimal_dtype

    summary = ClassifySummary(output=output_prefix_of(output_prefix))
    labels: list = []  # per sample, as given
    first: tuple[type, str] | None = None  # (label type, FILE:LINE where it was first seen)
    if fixed is not None:
        first = (type(fixed[0]), label_set)
    writer = BinIdxWriter(summary.output, optimal_dtype(enc.vocab_size))
    progress = Progress("classify", input_bytes(inputs), quiet, log_interval, unit="samples")
    try:
        with atomic_outputs([labels_path(summary.output), label_set_path(summary.output)]) as (tmp_ids, tmp_set):
            for chunk in iter_records(inputs, RECORD_KEYS):
                progress.update(chunk.path, chunk.input_pos, len(labels))
                texts, counts, wheres = [], [], []
                for i in range(len(chunk.records)):
                    where = chunk.where(i)
                    if not chunk.columnar and not chunk.records[i].strip():
                        summary.blank_lines += 1
                        continue
                    text, pair, label = _record(chunk, i, where)
                    if first is None:
                        first = (type(label), where)
                    elif type(label) is not first[0]:
                        raise DataToolsError(
                            f"{where}: label {label!r} is {_kind(type(label))} but {first[1]} has {_kind(first[0])}; "
                            "use one type of label per dataset (nothing was written)")
                    if fixed is not None and label not in fixed:
                        raise DataToolsError(f"{where}: label {label!r} is not in the label set {label_set} "
                                             f"({', '.join(map(repr, fixed))}); fix the line or drop --label-set")
                    labels.append(label)
                    texts += [text] + ([pair] if pair else [])
                    counts.append(2 if pair else 1)
                    wheres.append(where)
                if not counts:
                    continue
                ids = enc.ids(texts)
                lengths = np.asarray([len(x) for x in ids], np.int32)
                starts = np.cumsum([0] + counts[:-1])
                for k, c in enumerate(counts):  # a text can tokenize to nothing (e.g. only spaces)
                    if lengths[starts[k]] == 0 or (c == 2 and lengths[starts[k] + 1] == 0):
                        raise DataToolsError(f"{wheres[k]}: text or text_pair tokenizes to no tokens; "
                                             "fix the line (nothing was written)")
                flat = np.concatenate([np.asarray(x, np.int64) for x in ids])
                writer.add_documents(flat, lengths, np.asarray(counts, np.int64))
                summary.pairs += counts.count(2)
            if not labels:
                raise DataToolsError(f"{paths[0]}: no samples (every line is blank); nothing was written")
            names = fixed if fixed is not None else sorted(set(labels))
            if len(names) < 2:
                raise DataToolsError(f"{', '.join(paths)}: every one of the {len(labels)} samples has label "
                                     f"{names[0]!r}; a classifier needs 2 or more classes (nothing was written)")
            index = {name: i for i, name in enumerate(names)}
            class_ids = np.asarray([index[lab] for lab in labels], np.int32)
            summary.labels, summary.counts = list(names), np.bincount(class_ids, minlength=len(names)).tolist()
            summary.samples, summary.tokens = writer.documents, writer.tokens
            with open(tmp_ids, "wb") as f:
                np.save(f, class_ids)
            with open(tmp_set, "w") as f:
                json.dump({"labels": summary.labels, "counts": summary.counts, "samples": summary.samples,
                           "inputs": [os.path.abspath(p) for p in paths]}, f, indent=1)
        writer.finalize()  # the side files first: the token prefix (what training is given) appears last
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()
    summary.seconds = time.perf_counter() - t0
    if not quiet:
        print(summary, file=sys.stderr)
    return summary


def _kind(t: type) -> str:
    return "an integer" if t is int else "a string"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.classify", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help=".jsonl(.gz/.zst), .parquet, .arrow files (folders, "
                   "quoted globs, as preprocess) with text, label (and text_pair)")
    p.add_argument("--output-prefix", required=True,
                   help="writes PREFIX_cls_document.bin/.idx and its _labels.npy / _labels.json side files")
    p.add_argument("--tokenizer-model", required=True,
                   help="sentencepiece .model, or a Hugging Face tokenizer directory (tokenizer.json)")
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="auto")
    p.add_argument("--label-set", metavar="LABELS_JSON",
                   help="number the classes as this earlier output's _labels.json does (e.g. for a validation file)")
    p.add_argument("--log-interval", type=float, default=1.0,
                   help="seconds between progress updates (off a terminal: one plain line each)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    classify_preprocess(a.input, a.output_prefix, a.tokenizer_model, a.tokenizer_type, a.label_set, a.quiet,
                        a.log_interval)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
