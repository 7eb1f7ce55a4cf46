"""Gopher's quality filters (Rae et al. 2021, appendix A: "MassiveText quality filters").

`quality_failure(text, words, cfg)` is the first rule a document fails, or None, checking in
datatrove GopherQualityFilter's order so the two name the same rule:

  words              50 <= words <= 100,000 (words of punctuation only not counted)
  mean_word_length   3 <= mean length of those words <= 10 characters
  hash_ratio         '#' per word <= 0.1            ("symbol-to-word ratio ... for the hash symbol")
  ellipsis_ratio     '...' or '…' per word <= 0.1   ("... or the ellipsis")
  bullet_lines       <= 90% of lines start with a bullet ('•' or '-', after indentation)
  ellipsis_lines     <= 30% of lines end with '...' or '…'
  alpha_words        >= 80% of words contain an alphabetic character
  stop_words         >= 2 of: the, be, to, of, and, that, have, with

The one deliberate difference from datatrove is what a word is (`words_of`): by default the
whitespace-separated tokens, as the paper counts words. datatrove's spaCy tokenizer makes every
punctuation mark a word of its own, so its alpha_words rule counts "," and "." against a document:
punctuated verse and prose with many short clauses fall under 80% there and pass here. With
whitespace words, a stop word is matched with the punctuation around it removed ("the," is
"the"); stop words are matched case-sensitively, as datatrove does. `word_splitter="datatrove"`
uses datatrove's own tokenizer, and then every decision equals datatrove's (tests/test_clean.py).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Callable

from data_tools.clean_config import CleanConfig

BULLETS = ("•", "-")
ELLIPSES = ("...", "…")


@lru_cache(maxsize=4096)
def _punctuation(c: str) -> bool:
    return unicodedata.category(c)[0] in "PS" or unicodedata.category(c)[0] == "C"


def is_symbol_word(w: str) -> bool:
    """A word of punctuation, symbols or controls only ('-', '...', '|'): not counted as a word."""
    return all(_punctuation(c) for c in w)


def words_splitter(name: str) -> Callable[[str], list[str]]:
    """The word splitter of `CleanConfig.word_splitter`."""
    if name == "datatrove":
        from datatrove.utils.text import split_into_words  # optional: the reference's own words

        return lambda text: split_into_words(text, "en")
    return str.split


def _strip_punct(w: str) -> str:
    i, j = 0, len(w)
    while i < j and _punctuation(w[i]):
        i += 1
    while j > i and _punctuation(w[j - 1]):
        j -= 1
    return w[i:j]


def quality_failure(text: str, words: list[str], cfg: CleanConfig) -> str | None:
    """The name of the first quality rule `text` (split into `words`) fails, or None."""
    n_words = len(words)
    real = [w for w in words if not is_symbol_word(w)]
    if cfg.min_words is not None and len(real) < cfg.min_words:
        return "words"
    if cfg.max_words is not None and len(real) > cfg.max_words:
        return "words"
    if cfg.min_mean_word_length is not None or cfg.max_mean_word_length is not None:
        mean = sum(map(len, real)) / len(real) if real else 0.0
        if cfg.min_mean_word_length is not None and mean < cfg.min_mean_word_length:
            return "mean_word_length"
        if cfg.max_mean_word_length is not None and mean > cfg.max_mean_word_length:
            return "mean_word_length"
    per_word = max(n_words, 1)
    if cfg.max_hash_ratio is not None and text.count("#") / per_word > cfg.max_hash_ratio:
        return "hash_ratio"
    if cfg.max_ellipsis_ratio is not None and \
            (text.count("...") + text.count("…")) / per_word > cfg.max_ellipsis_ratio:
        return "ellipsis_ratio"
    if cfg.max_bullet_lines is not None or cfg.max_ellipsis_lines is not None:
        lines = text.splitlines() or [""]
        if cfg.max_bullet_lines is not None and \
                sum(s.lstrip().startswith(BULLETS) for s in lines) / len(lines) > cfg.max_bullet_lines:
            return "bullet_lines"
        if cfg.max_ellipsis_lines is not None and \
                sum(s.rstrip().endswith(ELLIPSES) for s in lines) / len(lines) > cfg.max_ellipsis_lines:
            return "ellipsis_lines"
    if cfg.min_alpha_words is not None and \
            sum(any(c.isalpha() for c in w) for w in words) / per_word < cfg.min_alpha_words:
        return "alpha_words"
    if cfg.min_stop_words is not None:
        present = cfg.stop_word_set.intersection(words)
        if len(present) < cfg.min_stop_words:  # only then look at words with punctuation attached
            present |= cfg.stop_word_set.intersection(map(_strip_punct, words))
        if len(present) < cfg.min_stop_words:
            return "stop_words"
    return None
