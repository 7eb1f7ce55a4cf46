"""C4's line filters (Raffel et al. 2020, section 2.2; the TFDS c4_utils reference, as datatrove's
C4QualityFilter implements it), optional in data_tools.clean (`--set c4_lines=true`), run after
normalization and before the Gopher filters, since they change the text.

Per line (split at line breaks, stripped): a line with a word over 1,000 characters goes; Wikipedia
citation marks ([1], [edit], [citation needed]) are removed; a line that does not end in terminal
punctuation (. ? ! " ') or ends in "..." goes; a line of fewer than `c4_min_words_per_line` words
(3) goes; a line mentioning "javascript" or a cookie/terms-of-use phrase goes. Per document: "lorem
ipsum" in a kept line removes it (c4_lorem_ipsum), a "{" in a kept line removes it
(c4_curly_bracket: code and templates), and fewer than `c4_min_sentences` (5) sentences in the kept
lines removes it (c4_too_few_sentences). The kept lines are joined with "\\n". Sentences are
nltk Punkt's (data_tools.sentences), or datatrove's splitter with word_splitter="datatrove".
Off by default: the stdlib corpus is code, and C4's rules drop every line of it.
"""

from __future__ import annotations

import re
from typing import Callable

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def sentence_counter(word_splitter: str) -> Callable[[str], int]:
    if word_splitter == "datatrove":
        from datatrove.utils.text import split_into_sentences

        return lambda line: len(split_into_sentences(line, "en"))
    from data_tools.sentences import SentenceSplitter

    splitter = SentenceSplitter()
    return lambda line: len(splitter.split(line))


def c4_filter(text: str, min_words: int, min_sentences: int, count_sentences: Callable[[str], int]) \
        -> tuple[str | None, str | None, int]:
    """(the kept text or None, the rule that removed the document or None, lines removed)."""
    kept, removed, sentences = [], 0, 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if any(len(w) > 1000 for w in words):
            removed += 1
            continue
        line = CITATION.sub("", line)
        if not line.endswith(END_PUNCTUATION) or line.endswith("...") or len(words) < min_words:
            removed += 1
            continue
        lower = line.lower()
        if "lorem ipsum" in lower:
            return None, "c4_lorem_ipsum", removed
        if "javascript" in lower:
            removed += 1
            continue
        if "{" in line:
            return None, "c4_curly_bracket", removed
        if any(p in lower for p in POLICY):
            removed += 1
            continue
        sentences += count_sentences(line)
        kept.append(line)
    if sentences < min_sentences:
        return None, "c4_too_few_sentences", removed
    return "\n".join(kept).strip(), None, removed
