"""Gopher's repetition filters (Rae et al. 2021, appendix A, table A1).

`repetition_failure(text, words, cfg)` is the first rule a document fails, or None, in datatrove
GopherRepetitionFilter's order. Every character fraction is over len(text):

  dup_para_frac       paragraphs (split at blank lines) equal to an earlier one / paragraphs   <= 0.30
  dup_para_chars      their characters / characters                                            <= 0.20
  dup_line_frac       lines equal to an earlier line / lines                                   <= 0.30
  dup_line_chars      their characters / characters                                            <= 0.20
  top_{2,3,4}gram_chars   characters of the most frequent word n-gram (words joined by one space)
                          times its count / characters                        <= 0.20 / 0.18 / 0.16
  dup_{5..10}gram_chars   characters in word n-grams that repeat an earlier n-gram (spaces not
                          counted; after a repeat the scan jumps past it, so overlapping repeats
                          are not counted twice) / characters     <= 0.15 / 0.14 / ... / 0.10

These are datatrove's definitions, kept so the two agree document by document; the paper's text
("the fraction of characters contained within the most frequently-occurring n-gram", "... within
all duplicate n-grams, taking care not to count characters that occur in overlapping n-grams more
than once") leaves the exact counting open, and datatrove's is one reading of it. Words are the
caller's (data_tools.gopher_quality.words_splitter): whitespace tokens by default.
"""

from __future__ import annotations

import re
from collections import Counter

from data_tools.clean_config import CleanConfig

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """(how many parts repeat an earlier one, their characters)."""
    seen: set[str] = set()
    n = chars = 0
    for p in parts:
        if p in seen:
            n += 1
            chars += len(p)
        else:
            seen.add(p)
    return n, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    counts = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    return len(gram) * count


def _dup_ngram_chars(words: list[str], n: int) -> int:
    seen: set[tuple[str, ...]] = set()
    chars, i, last = 0, 0, len(words) - n + 1
    while i < last:
        gram = tuple(words[i:i + n])
        if gram in seen:
            chars += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def repetition_failure(text: str, words: list[str], cfg: CleanConfig) -> str | None:
    """The name of the first repetition rule `text` (split into `words`) fails, or None."""
    size = len(text)
    if not size:
        return "dup_para_frac"  # nothing but repetition; clean drops empty documents before this
    if cfg.max_dup_para_frac is not None or cfg.max_dup_para_chars is not None:
        paragraphs = _PARAGRAPHS.split(text.strip())
        n, chars = _duplicates(paragraphs)
        if cfg.max_dup_para_frac is not None and n / len(paragraphs) > cfg.max_dup_para_frac:
            return "dup_para_frac"
        if cfg.max_dup_para_chars is not None and chars / size > cfg.max_dup_para_chars:
            return "dup_para_chars"
    if cfg.max_dup_line_frac is not None or cfg.max_dup_line_chars is not None:
        lines = _LINES.split(text)
        n, chars = _duplicates(lines)
        if cfg.max_dup_line_frac is not None and n / len(lines) > cfg.max_dup_line_frac:
            return "dup_line_frac"
        if cfg.max_dup_line_chars is not None and chars / size > cfg.max_dup_line_chars:
            return "dup_line_chars"
    for n, limit in cfg.top_ngrams():
        if len(words) >= n and _top_ngram_chars(words, n) / size > limit:
            return f"top_{n}gram_chars"
    for n, limit in cfg.dup_ngrams():
        if _dup_ngram_chars(words, n) / size > limit:
            return f"dup_{n}gram_chars"
    return None
