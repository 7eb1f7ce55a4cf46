"""Test-set decontamination: find documents that share a word n-gram with evaluation texts.

As GPT-3 (Brown et al. 2020, appendix C): n = 13 by default, words compared lowercased with
punctuation removed (`ngram_words`), so "The cat, sat" and "the cat sat" match. The evaluation
texts (any input `preprocess` reads) become a set of 64-bit hashes of their n-grams; an evaluation
text shorter than n words cannot match anything and is counted as such. A document with any of
those n-grams is removed ("contaminated"), or, with `decontam_action="report"`, kept and listed
in the manifest.
"""

from __future__ import annotations

import re
from typing import Sequence

import xxhash

from data_tools.errors import DataToolsError

_NOT_WORD = re.compile(r"[\W_]+")


def ngram_words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.lower()).split()


def ngram_hashes(text: str, n: int) -> set[int]:
    w = ngram_words(text)
    return {xxhash.xxh3_64_intdigest(" ".join(w[i:i + n]).encode()) for i in range(len(w) - n + 1)}


def is_contaminated(text: str, n: int, eval_hashes: frozenset[int]) -> bool:
    w = ngram_words(text)
    return any(xxhash.xxh3_64_intdigest(" ".join(w[i:i + n]).encode()) in eval_hashes for i in range(len(w) - n + 1))


def load_eval_ngrams(paths: Sequence[str], key: str, n: int, form: str) -> tuple[frozenset[int], dict]:
    """(the n-gram hashes of every evaluation text, counts for the manifest); one-line errors for a
    bad path or column, or no usable text."""
    from data_tools.inputs import check_inputs, iter_records, load_record, resolve_inputs
    from data_tools.jsonl_reader import UnparsableLine
    from data_tools.normalize import normalize

    inputs = resolve_inputs(paths)
    check_inputs(inputs, [key])
    hashes: set[int] = set()
    texts = too_short = skipped = 0
    for chunk in iter_records(inputs, [key]):
        for i in range(len(chunk.records)):
            try:
                rec = load_record(chunk, i)
            except UnparsableLine:
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str) or not rec[key].strip():
                skipped += 1
                continue
            grams = ngram_hashes(normalize(rec[key], form), n)
            texts += 1
            too_short += not grams
            hashes |= grams
    if not hashes:
        raise DataToolsError(f"{inputs[0].path}: no evaluation text of {n} words or more under key {key!r} "
                             f"({texts} texts, {skipped} lines skipped); nothing to decontaminate against")
    return frozenset(hashes), {"paths": [f.path for f in inputs], "texts": texts, "shorter_than_n": too_short,
                               "skipped_lines": skipped, "ngrams": len(hashes)}
