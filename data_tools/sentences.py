"""Offline sentence splitting for `preprocess --split-sentences` (BERT-style sentence pairs).

nltk's Punkt works without downloaded data: `PunktSentenceTokenizer()` uses its built-in
English-like defaults, and `PunktTrainer` can learn abbreviations from a sample of the input.
Blank lines are also boundaries (paragraphs in prose, top-level blocks in code).

The pieces returned always concatenate back to the input exactly (whitespace between sentences
stays at the end of the earlier one), so decoding all sentences of a document gives the text.
"""

from __future__ import annotations

import re

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "prof", "st", "vs", "etc", "e.g", "i.e", "cf", "fig", "no", "vol", "jr", "sr", "inc", "ltd", "co"}


class SentenceSplitter:
    def __init__(self, train_text: str | None = None):
        from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer

        if train_text:
            trainer = PunktTrainer()
            trainer.train(train_text, finalize=True)
            self._punkt = PunktSentenceTokenizer(trainer.get_params())
        else:
            self._punkt = PunktSentenceTokenizer()
            # Untrained Punkt knows no abbreviations; the commonest ones avoid "Dr." / "e.g." splits.
            self._punkt._params.abbrev_types.update(_ABBREVIATIONS)

    def split(self, text: str) -> list[str]:
        """Consecutive, non-empty pieces of `text` whose concatenation is `text`."""
        starts = []
        para_start = 0
        for m in list(_PARAGRAPH.finditer(text)) + [None]:
            para_end = m.end() if m else len(text)
            para = text[para_start:para_end]
            starts.extend(para_start + s for s, _ in self._punkt.span_tokenize(para))
            starts.append(para_start)
            para_start = para_end
            if para_start >= len(text):
                break
        cuts = sorted(set(s for s in starts if 0 < s < len(text)))
        bounds = [0, *cuts, len(text)]
        return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
